-- start_check.lua: publishes nothing to a channel of taskd's that nobody listens on (taskd.redis_needs,
-- which reads it; not one of the store's scripts: it has no keys).
--
-- Run once at each start, it shows that Redis takes SCRIPT LOAD and EVALSHA from taskd's user and
-- lets its scripts publish on taskd's channels, without which every submit, take, finish and
-- cancel fails.
-- ARGV[1]  channel  {taskd}:start_check
return redis.call('PUBLISH', ARGV[1], '')
