-- cancel.lua: cancels a queued or processing task, removing its arq job.
--
-- Writes the cancellation (and the state it came from), frees the task's running entry and
-- drops its job, and, through ended(), counts it, frees its project slot, makes its webhook due
-- and emits the event. A task that already ended is left as it is.
-- KEYS[1]  task     {taskd}:task:{id}, the record hash
-- KEYS[2]  running  {taskd}:running:{queue}, the queue's processing tasks
-- KEYS[3]  metrics  {taskd}:metrics, the shared counters
-- KEYS[4]  outbox   {taskd}:webhooks:due, the webhook outbox
-- KEYS[5]  queue    {taskd}:queue:{queue}, arq's sorted set of the queue
-- ARGV[1]  now      now, in seconds (its cancelled_at)
-- ARGV[2]  ttl      seconds the record is kept from now
-- ARGV[3]  task_id  the task's id
-- ARGV[4]  now_ms   now, in ms: when its webhook is due
-- ARGV[5]  aging_ms execution.priority_aging in ms (lib/fair.lua)
-- ARGV[6]  error    the error to record with the cancellation ('' for none): a purge says so
-- ARGV[7]  queued_only  '1': cancel only a queued task (a purge leaves one that has started)
-- A queued task leaves its project's line, and when it was the head the next one takes its turn
-- (lib/fair.lua) and one worker is woken for it (lib/wake.lua). Through ended(), the tasks
-- waiting for it (depends_on) are cancelled too.
-- Returns {'cancelled_now', previous status, cancelled_at} when cancelled here; {status,
-- previous_state or '', cancelled_at or ''} when it had already ended, or was processing and
-- queued_only was given; false if the record is gone.
-- include lib/emit.lua
-- include lib/drop_job.lua
-- include lib/ended.lua
-- include lib/fair.lua
-- include lib/wake.lua
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status ~= 'queued' and (status ~= 'processing' or ARGV[7] == '1') then
  return {status, redis.call('HGET', KEYS[1], 'previous_state') or '', redis.call('HGET', KEYS[1], 'cancelled_at') or ''}
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'previous_state', status, 'cancelled_at', ARGV[1],
           'updated_at', ARGV[1], 'completed_at', ARGV[1])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[6]) end
-- A task waiting for its dependencies has no job yet, so no place in line.
local job_id = redis.call('HGET', KEYS[1], 'job_id')
if status == 'queued' and job_id and leave_line(KEYS[1], job_id, tonumber(ARGV[4]), tonumber(ARGV[5])) then
  -- It was its project's head: the next job took its place on arq's set, and a worker is woken for it.
  wake_one(redis.call('HGET', KEYS[1], 'queue'))
end
redis.call('HDEL', KEYS[1], 'worker_id', 'next_retry_at')
redis.call('ZREM', KEYS[2], ARGV[3])
drop_job(KEYS[1], KEYS[5])
ended(KEYS[1], KEYS[3], KEYS[4], 'cancelled_tasks', 'cancelled', ARGV[3], ARGV[4], ARGV[2], tonumber(ARGV[5]))
return {'cancelled_now', status, ARGV[1]}
