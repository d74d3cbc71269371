-- keep.lua: keeps one value of a running task's run state for the next run of the same task
-- (taskd.store.run_state), if the calling worker still runs it.
--
-- The state lives as long as the task's record, and holds at most `limit` bytes of field names and
-- values together: a value that would pass that is not kept. The record's `run_state` field says
-- there is one, for lib/ended.lua, which deletes it when the task ends (an end of a task that kept
-- nothing costs no command for it).
-- KEYS[1]  task       {taskd}:task:{id}, the record hash
-- KEYS[2]  state      {taskd}:run:{id}, the run state hash
-- ARGV[1]  worker_id  the calling worker's id
-- ARGV[2]  name       the field
-- ARGV[3]  value      its value
-- ARGV[4]  limit      the most bytes the state may hold
-- Returns 1 when kept; 0 when the task is not processing or is another worker's (a run that
-- outlived its end: nothing is kept for a run that will not come); -1 when it would pass `limit`.
local record = redis.call('HMGET', KEYS[1], 'status', 'worker_id', 'run_state')
if record[1] ~= 'processing' or record[2] ~= ARGV[1] then return 0 end
local used = 0
local fields = redis.call('HGETALL', KEYS[2])
for i = 1, #fields, 2 do
  if fields[i] ~= ARGV[2] then used = used + #fields[i] + #fields[i + 1] end
end
if used + #ARGV[2] + #ARGV[3] > tonumber(ARGV[4]) then return -1 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if not record[3] then redis.call('HSET', KEYS[1], 'run_state', '1') end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
