-- claim.lua: leases up to `most` due webhooks to the calling sender, with what it needs to send them.
--
-- KEYS[1]  due          {taskd}:webhooks:due, member (task id, or `{id}:{event}`) -> ms its next attempt
--                       is due (or its lease ends)
-- ARGV[1]  now          now, in ms
-- ARGV[2]  lease_until  the ms the lease ends: the claimed members' new score
-- ARGV[3]  most         how many to claim at most
-- Returns {claimed task ids, the earliest score in the outbox after the claim (false when it is
-- empty), their records, their delivery states}. A record is its hash as HGETALL gives it (empty
-- when the task is gone); a delivery state is {attempts, run, run_started_at} of its hash: the
-- attempts made (false before the first) and, for a `started` webhook, the run it reports
-- (lib/begin.lua; false for the others). The sender reads them here rather than in two more round
-- trips before its POST.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local records, states = {}, {}
for i, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  -- A member is the task id for the end's webhook, `{id}:{event}` for the others (webhook_events).
  records[i] = redis.call('HGETALL', '@TASK_PREFIX@' .. string.match(id, '^[^:]*'))
  states[i] = redis.call('HMGET', '@WEBHOOK_PREFIX@' .. id, 'attempts', 'run', 'run_started_at')
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] or false
return {ids, first, records, states}
