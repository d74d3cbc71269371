-- window.lua: spends one request of a key's quota per sliding window (a log of its requests).
--
-- At most `limit` requests of one key are accepted in any `window` ms: the key's sorted set holds
-- the time of each accepted request, and one that would be the limit+1-th within the last window
-- is refused, however the earlier ones were spread. Redis's own clock is used, so every taskd
-- process agrees.
-- KEYS[1]  log     taskd:ratelimit:{policy}:{key hash}, accepted request times (ms) -> themselves
-- ARGV[1]  limit   requests allowed per window
-- ARGV[2]  window  the window, in ms
-- ARGV[3]  nonce   a value unique to this request (two requests may share a millisecond)
-- Returns {allowed (1 or 0), remaining, retry-after ms, reset ms}. Both times are when the oldest
-- request still in the window leaves it (one more request is allowed then): a refused request's
-- wait, and the reset the RateLimit field announces (0 with nothing counted).
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local function leaves()
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
  if not oldest then return 0 end
  return math.max(1, tonumber(oldest) + window - now)
end
if count >= limit then
  local wait = leaves()
  return {0, 0, wait, wait}
end
redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
return {1, limit - count - 1, 0, leaves()}
