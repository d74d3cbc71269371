-- acquire.lua: takes a slot of an outside provider for one request, if the provider's limits allow it now.
--
-- Two limits, shared by every taskd process on every host (Redis's own clock is used, so all
-- agree): at most `limit` requests in flight at once, each holding its slot until it is released
-- or its lease ends (so a worker that died while holding one gives it back after one lease), and
-- at most `per_minute` requests sent in any 60 s (a sliding log, as taskd/http/lua/window.lua).
-- A request enters the minute's log only when it gets its slot: a refused try costs nothing.
-- KEYS[1]  slots       {taskd}:provider:{name}:slots, holder -> ms its lease ends
-- KEYS[2]  minute      {taskd}:provider:{name}:minute, times (ms) of the requests sent -> themselves
-- ARGV[1]  limit       requests in flight at once (0 = unlimited: no slot is recorded)
-- ARGV[2]  per_minute  requests per 60 s (0 = unlimited: nothing is logged)
-- ARGV[3]  lease       ms a slot stays held without a renewal
-- ARGV[4]  holder      a name unique to this request
-- Returns {outcome, wait ms}: outcome 1 when the slot is taken (wait 0); 0 when every slot is held,
-- with the time until the first lease ends (a slot released earlier frees sooner: callers ask
-- again within a quarter second); -1 when the minute's requests are spent, with the time until
-- the oldest leaves the window.
local limit = tonumber(ARGV[1])
local per_minute = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= limit then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
    return {0, math.max(1, tonumber(first) - now)}
  end
end
if per_minute > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[2]) >= per_minute then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2]
    return {-1, math.max(1, tonumber(oldest) + 60000 - now)}
  end
  redis.call('ZADD', KEYS[2], now, now .. ':' .. ARGV[4])
  redis.call('PEXPIRE', KEYS[2], 60000)
end
if limit > 0 then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[4])
  -- Every lease is as long as this one and began no later, so none outlives the key.
  redis.call('PEXPIRE', KEYS[1], lease)
end
return {1, 0}
