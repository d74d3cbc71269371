-- release.lua: gives a lease back without an attempt (the sender is stopping, or the task is gone).
--
-- KEYS[1]  due      {taskd}:webhooks:due
-- ARGV[1]  task_id  the task whose webhook this is
-- ARGV[2]  lease    the lease (score) the caller set when it claimed the webhook
-- ARGV[3]  due_at   the ms it is due again; '' drops it from the outbox
-- Returns 1 when released; 0 when the lease was lost.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
return 1
