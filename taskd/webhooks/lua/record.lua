-- record.lua: writes how one delivery attempt went, if the caller still holds its lease.
--
-- KEYS[1]  due       {taskd}:webhooks:due
-- KEYS[2]  state     {taskd}:webhook:{id}, the delivery state hash shown by GET status
-- KEYS[3]  metrics   {taskd}:metrics, the counters hash
-- ARGV[1]  task_id   the task whose webhook this is
-- ARGV[2]  lease     the lease (score) the caller set when it claimed the webhook
-- ARGV[3]  now       now, in ms
-- ARGV[4]  attempt   the attempt's number
-- ARGV[5]  outcome   delivered | retry | failed
-- ARGV[6]  status    the receiver's HTTP status, or '' (none: it could not be reached)
-- ARGV[7]  error     what went wrong, or ''
-- ARGV[8]  next_due  for a retry, the ms the next attempt is due; else ''
-- ARGV[9]  ttl       seconds the state hash is kept
-- Returns 1 when written; 0 when the lease was lost (another sender holds the webhook now).
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[2], 'attempts', ARGV[4], 'last_attempt_at', ARGV[3])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'last_status', ARGV[6]) else redis.call('HDEL', KEYS[2], 'last_status') end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'last_error', ARGV[7]) else redis.call('HDEL', KEYS[2], 'last_error') end
if ARGV[5] == 'retry' then
  redis.call('ZADD', KEYS[1], ARGV[8], ARGV[1])
  redis.call('HSET', KEYS[2], 'next_attempt_at', ARGV[8])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], 'next_attempt_at')
  local field = ARGV[5] == 'delivered' and 'delivered_at' or 'failed_at'
  redis.call('HSET', KEYS[2], field, ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'webhooks_' .. ARGV[5], 1)
end
redis.call('EXPIRE', KEYS[2], ARGV[9])
return 1
