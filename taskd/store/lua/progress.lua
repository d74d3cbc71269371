-- progress.lua: records the progress of a task, if the calling worker still runs it under the same job.
--
-- A task whose webhook_events include `progress` gets a progress webhook, coalesced
-- (queue_progress_webhook in lib/webhook_event.lua).
-- KEYS[1]  task            {taskd}:task:{id}, the record hash
-- KEYS[2]  outbox          {taskd}:webhooks:due, the webhook outbox
-- KEYS[3]  progress_state  {taskd}:webhook:{id}:progress, the delivery state of its progress webhook
-- ARGV[1]  progress        the fraction done, 0.0 to 1.0
-- ARGV[2]  step            the current step's description; '' leaves the stored one
-- ARGV[3]  now             now, in seconds (the record's updated_at)
-- ARGV[4]  worker_id       the calling worker's id
-- ARGV[5]  task_id         the task's id
-- ARGV[6]  now_ms          now, in ms
-- ARGV[7]  interval_ms     webhooks.progress_interval in ms: the least time between two progress webhooks
-- ARGV[8]  job_id          the arq job of the reporting run: an older run's reports do not reach the
--                          record of a newer one (finish.lua)
-- Returns 1 when written (and a progress event emitted), or when the report is older than the one
-- recorded (below); 0 when the task is not processing, or is another worker's or another job's.
--
-- A run's progress never goes back (its start set it to 0): a report below the recorded one is
-- dropped, step and all. A handler's context never reports less than it did (taskd.tasks.spec),
-- but reports a handler makes at once (its asyncio tasks each reporting their part) are written
-- on several connections, and Redis may run a later report's write first.
-- include lib/emit.lua
-- include lib/webhook_event.lua
local status, worker_id, job_id, recorded =
  unpack(redis.call('HMGET', KEYS[1], 'status', 'worker_id', 'job_id', 'progress'))
if status ~= 'processing' or worker_id ~= ARGV[4] or job_id ~= ARGV[8] then return 0 end
if tonumber(ARGV[1]) < (tonumber(recorded) or 0) then return 1 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'updated_at', ARGV[3])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'current_step', ARGV[2]) end
queue_progress_webhook(KEYS[1], KEYS[2], KEYS[3], ARGV[5], ARGV[6], ARGV[7])
emit(KEYS[1], 'progress')
return 1
