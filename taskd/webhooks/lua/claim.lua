-- claim.lua: leases up to `most` due webhooks to the calling sender.
--
-- KEYS[1]  due          taskd:webhooks:due, task id -> ms its next attempt is due (or its lease ends)
-- ARGV[1]  now          now, in ms
-- ARGV[2]  lease_until  the ms the lease ends: the claimed members' new score
-- ARGV[3]  most         how many to claim at most
-- Returns {claimed task ids, false} or, when none were due, {{}, the earliest score still waiting
-- (false when the outbox is empty)}.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
local first = false
if #ids == 0 then first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] or false end
return {ids, first}
