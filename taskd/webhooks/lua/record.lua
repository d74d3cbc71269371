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
-- ARGV[9]  ttl       seconds the state hash is kept at least (as long as the task's record if longer)
-- ARGV[10] keep_until for a retry, the ms until which the task's record must last: the next attempt's
--                    end (its due time and webhooks.timeout) and a margin; else ''
-- Returns 1 when written; 0 when the lease was lost (another sender holds the webhook now).
-- A retry keeps the task's record (its project's index and its event stream) until `keep_until` when it would be gone
-- sooner: an ended record lives its `keep_for` or storage.task_ttl from its end, and a retry
-- window longer than that (`keep_for` 60 and a receiver that hangs through two 30 s timeouts;
-- webhooks.extra_delays past the TTL) had its later attempts dropped, the task gone. A heavy
-- record's bytes are counted until then (lib/stored.lua). A redelivery's retries (POST
-- …/webhook/redeliver) do not keep it: the record lives no longer than its end's schedule made it.
-- include lib/stored.lua
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
-- The member is the task id, or `{id}:started` / `{id}:progress`.
local task_key = '@TASK_PREFIX@' .. string.match(ARGV[1], '^[^:]+')
redis.call('HSET', KEYS[2], 'attempts', ARGV[4], 'last_attempt_at', ARGV[3])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'last_status', ARGV[6]) else redis.call('HDEL', KEYS[2], 'last_status') end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], 'last_error', ARGV[7]) else redis.call('HDEL', KEYS[2], 'last_error') end
if ARGV[5] == 'retry' then
  redis.call('ZADD', KEYS[1], ARGV[8], ARGV[1])
  redis.call('HSET', KEYS[2], 'next_attempt_at', ARGV[8])
  local now_s = tonumber(ARGV[3]) / 1000
  local need = math.ceil((tonumber(ARGV[10]) - tonumber(ARGV[3])) / 1000)
  local left = redis.call('TTL', task_key)
  -- Not for a redelivery's retries: a caller redelivering to a receiver that fails would keep its
  -- record for ever, a minute and a half at a time.
  if left >= 0 and left < need and redis.call('HEXISTS', KEYS[2], 'redelivered_at') == 0 then
    redis.call('EXPIRE', task_key, need)
    -- A record broken by hand (no project_id, a count that is not a number) is only kept: this
    -- script must not fail, or the attempt's outcome would never be written.
    local f = redis.call('HMGET', task_key, 'project_id', 'stored_until', 'stored_bytes', 'updated_at')
    -- Its event stream with it, never past a stream's life after its end (`updated_at`): the end
    -- expired it with a short `keep_for` (lib/emit.lua), and while the record was kept on, a client
    -- resuming its events with the end's id got the end again, made from the record, instead of a
    -- 204, and an EventSource reconnected every few seconds until the record went.
    local events = '@TASK_EVENTS_PREFIX@' .. string.match(ARGV[1], '^[^:]+')
    local life = math.min(need, @EVENTS_TTL@ - math.floor(now_s - (tonumber(f[4]) or now_s)))
    local quiet = redis.call('TTL', events)
    if quiet >= 0 and quiet < life then redis.call('EXPIRE', events, life) end
    if f[1] then
      local index = '@PROJECT_PREFIX@' .. f[1]
      local kept = redis.call('TTL', index)
      if kept >= 0 and kept < need then redis.call('EXPIRE', index, need) end
      local counted, size = tonumber(f[2]), tonumber(f[3])
      if counted and size and counted < now_s + need then
        count_stored(f[1], task_key, f[3], stored_until(now_s, need), f[2], f[3], now_s)
      end
    end
  end
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], 'next_attempt_at')
  local field = ARGV[5] == 'delivered' and 'delivered_at' or 'failed_at'
  redis.call('HSET', KEYS[2], field, ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'webhooks_' .. ARGV[5], 1)
end
-- Kept as long as the record, whose `keep_for` may be longer than `ttl`: GET status shows it.
redis.call('EXPIRE', KEYS[2], math.max(tonumber(ARGV[9]), redis.call('TTL', task_key)))
return 1
