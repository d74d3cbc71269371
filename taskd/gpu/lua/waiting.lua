-- waiting.lua: shows on a queued task that it waits for a GPU slot (no worker has claimed it).
--
-- KEYS[1]  task  {taskd}:task:{id}, the record hash
-- ARGV[1]  step  the current_step to show, e.g. 'waiting_for_gpu'
-- Returns 1 when written; 0 when the task is not queued (it started, ended or was cancelled).
if redis.call('HGET', KEYS[1], 'status') ~= 'queued' then return 0 end
redis.call('HSET', KEYS[1], 'current_step', ARGV[1])
return 1
