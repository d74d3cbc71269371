-- reclaim.lua: takes back a processing task whose worker stopped beating, or whose live worker
-- no longer runs it.
--
-- The task is requeued under a new arq job, or failed once it has taken down `max_deaths`
-- workers. A worker whose heartbeat key still exists is alive, and its task is left alone.
-- KEYS[1]  task           {taskd}:task:{id}, the record hash
-- KEYS[2]  running        {taskd}:running:{queue}, the queue's processing tasks
-- KEYS[3]  metrics        {taskd}:metrics, the shared counters
-- KEYS[4]  outbox         {taskd}:webhooks:due, the webhook outbox
-- ARGV[1]  task_id        the task's id
-- ARGV[2]  now            now, in seconds (as stored in the record)
-- ARGV[3]  now_ms         now, in ms
-- ARGV[4]  queue          taskd's queue name
-- ARGV[5]  score          when the new job is due, in ms
-- ARGV[6]  max_deaths     the worker deaths after which the task fails
-- ARGV[7]  ttl            seconds a failed task's record is kept from now
-- ARGV[8]  worker_prefix  the prefix of a worker's heartbeat key ({taskd}:worker:)
-- ARGV[9]  aging_ms       execution.priority_aging in ms (lib/fair.lua)
-- ARGV[10] lost_by        '' for a dead worker's task; else the live worker, the caller, that does
--                         not run the task the record says it runs: its end was lost (a failover
--                         promoted a replica that had its start only). Taken back only while the
--                         record names that worker and job; not counted as a death.
-- ARGV[11] job_id         with lost_by: the job that worker found twice it does not run
-- The task leaves its project's processing set ({taskd}:project_processing:{project_id}); a requeued
-- one's new job joins its project's line (lib/fair.lua).
-- Returns 'requeued', 'failed', 'alive' (its worker beats again) or 'not_processing' (the task
-- ended meanwhile; its running entry is removed).
-- include lib/emit.lua
-- include lib/enqueue.lua
-- include lib/ended.lua
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'processing' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 'not_processing'
end
local owner = redis.call('HGET', KEYS[1], 'worker_id') or '?'
local lost = ARGV[10] ~= ''
if lost then
  if owner ~= ARGV[10] or redis.call('HGET', KEYS[1], 'job_id') ~= ARGV[11] then return 'alive' end
elseif redis.call('EXISTS', ARGV[8] .. owner) == 1 then
  return 'alive'
end
-- A lost end is not the task's doing: it does not count towards max_deaths.
local deaths = lost and 0 or redis.call('HINCRBY', KEYS[1], 'deaths', 1)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', '@PROCESSING_PREFIX@' .. redis.call('HGET', KEYS[1], 'project_id'), ARGV[1])
redis.call('HDEL', KEYS[1], 'worker_id', 'current_step')
local reason = 'worker ' .. owner .. ' died while running the task'
if lost then reason = 'worker ' .. owner .. ' no longer runs the task: the end of its run was lost' end
if not lost and deaths >= tonumber(ARGV[6]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'updated_at', ARGV[2], 'completed_at', ARGV[2],
             'error', 'Task failed: its worker died ' .. deaths .. ' times while running it (last: ' .. reason .. ')')
  ended(KEYS[1], KEYS[3], KEYS[4], 'failed_tasks', 'failed', ARGV[1], ARGV[3], ARGV[7], tonumber(ARGV[9]))
  return 'failed'
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'updated_at', ARGV[2], 'progress', '0.0', 'last_error', reason)
redis.call('HDEL', KEYS[1], 'started_at')
enqueue(KEYS[1], ARGV[1], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[3]), tonumber(ARGV[9]))
emit(KEYS[1], 'status')
return 'requeued'
