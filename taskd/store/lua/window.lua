-- window.lua: spends `cost` requests of a key's quota per sliding window (a log of its requests).
--
-- At most `limit` requests of one key are accepted in any `window` ms: the key's sorted set holds
-- the time of each accepted request, and one that would be the limit+1-th within the last window
-- is refused, however the earlier ones were spread. A request of cost n (a batch of n submissions)
-- is n requests at once: accepted whole only if n fit, else refused whole. Redis's own clock is
-- used, so every taskd process agrees.
-- KEYS[1]  log     {taskd}:ratelimit:{policy}:{key hash}, accepted request times (ms) -> themselves
-- ARGV[1]  limit   requests allowed per window
-- ARGV[2]  window  the window, in ms
-- ARGV[3]  nonce   a value unique to this request (two requests may share a millisecond)
-- ARGV[4]  cost    how many requests this one counts as (at least 1)
-- Returns {allowed (1 or 0), remaining, retry-after ms, reset ms}. The reset the RateLimit field
-- announces is when the oldest request still in the window leaves it (0 with nothing counted); a
-- refused request's wait is until enough have left for its cost (the whole window when its cost is
-- over the limit: it never fits).
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
-- When the (n+1)-th oldest request still in the window leaves it.
local function leaves(n)
  local oldest = redis.call('ZRANGE', KEYS[1], n, n, 'WITHSCORES')[2]
  if not oldest then return 0 end
  return math.max(1, tonumber(oldest) + window - now)
end
if count + cost > limit then
  local wait = window
  if cost <= limit then wait = leaves(count + cost - limit - 1) end
  return {0, math.max(0, limit - count), wait, leaves(0)}
end
for i = 1, cost do redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3] .. ':' .. i) end
redis.call('PEXPIRE', KEYS[1], window)
return {1, limit - count - cost, 0, leaves(0)}
