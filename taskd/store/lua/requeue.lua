-- requeue.lua: puts a task the calling worker runs back on its queue, under a new arq job.
--
-- A retry after a transient error (counted, with the error and when it is next tried), a running
-- task handed back at shutdown, or a task handed on by a worker without its type. A task cancelled or taken over meanwhile is left as it is, and so is one
-- started again since under a newer job (finish.lua).
-- KEYS[1]  task        {taskd}:task:{id}, the record hash
-- KEYS[2]  running     {taskd}:running:{queue}, the queue's processing tasks
-- KEYS[3]  metrics     {taskd}:metrics, the shared counters
-- ARGV[1]  worker_id   the calling worker's id
-- ARGV[2]  task_id     the task's id
-- ARGV[3]  now         now, in seconds (the record's updated_at)
-- ARGV[4]  now_ms      now, in ms (the new job's enqueue time)
-- ARGV[5]  queue       taskd's queue name
-- ARGV[6]  score       when the new job is due, in ms
-- ARGV[7]  retried     '1' counts an automatic retry (and keeps last_error), '0' a hand-back
-- ARGV[8]  last_error  the transient error a retry follows; '' for a hand-back
-- ARGV[9]  aging_ms    execution.priority_aging in ms (lib/fair.lua)
-- ARGV[10] not_run     '1' for a task handed on untouched (its type is not installed on the calling
--                      worker's host: taskd.engine.executor): its take started nothing, so its
--                      `attempt` goes back to what it was and its `hand_ons` count goes up; '0' else
-- ARGV[11] job_id      the arq job of the calling worker's run
-- The task leaves its project's processing set ({taskd}:project_processing:{project_id}) and its new
-- job joins its project's line (lib/fair.lua).
-- Returns 'ok' when requeued here; else the task's status (false if the record is gone).
-- include lib/emit.lua
-- include lib/enqueue.lua
-- include lib/drop_job.lua
local status, worker_id, job_id = unpack(redis.call('HMGET', KEYS[1], 'status', 'worker_id', 'job_id'))
if status ~= 'processing' or worker_id ~= ARGV[1] or job_id ~= ARGV[11] then
  return status or false
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[3], 'progress', '0.0')
redis.call('HDEL', KEYS[1], 'worker_id', 'started_at', 'current_step')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('SREM', '@PROCESSING_PREFIX@' .. redis.call('HGET', KEYS[1], 'project_id'), ARGV[2])
if ARGV[7] == '1' then
  redis.call('HINCRBY', KEYS[3], 'retried_tasks', 1)
  -- The task's own count, which retry.max_retries bounds (`attempt` also counts runs cut short);
  -- a record of a version that did not keep it got it at its start here (lib/begin.lua).
  redis.call('HINCRBY', KEYS[1], 'retries', 1)
  redis.call('HINCRBY', KEYS[3], 'retried:' .. redis.call('HGET', KEYS[1], 'task_type'), 1)
  redis.call('HSET', KEYS[1], 'last_error', ARGV[8], 'next_retry_at', tonumber(ARGV[6]) / 1000)
end
if ARGV[10] == '1' then
  -- `attempt` counts runs (max_attempts, ctx.attempt): a take that ran no handler is not one.
  redis.call('HINCRBY', KEYS[1], 'attempt', -1)
  redis.call('HINCRBY', KEYS[1], 'hand_ons', 1)
end
drop_job(KEYS[1], '@QUEUE_PREFIX@' .. ARGV[5])
enqueue(KEYS[1], ARGV[2], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[4]), tonumber(ARGV[9]))
emit(KEYS[1], 'status')
return 'ok'
