-- redeliver.lua: starts a fresh delivery of a task's webhook now and wakes every sender.
--
-- KEYS[1]  due      {taskd}:webhooks:due
-- KEYS[2]  state    {taskd}:webhook:{id}, the delivery state hash (reset: attempts count from 0)
-- ARGV[1]  task_id  the task whose webhook this is
-- ARGV[2]  now      now, in ms: when the first attempt is due
-- ARGV[3]  ttl      seconds the state hash is kept at least (as long as the task's record if longer)
-- ARGV[4]  wake     the channel the senders listen on
-- Returns 1.
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'attempts', 0, 'next_attempt_at', ARGV[2], 'redelivered_at', ARGV[2])
-- Kept as long as the record, whose `keep_for` may be longer than `ttl`: GET status shows it.
local left = redis.call('TTL', '@TASK_PREFIX@' .. ARGV[1])
redis.call('EXPIRE', KEYS[2], math.max(tonumber(ARGV[3]), left))
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
