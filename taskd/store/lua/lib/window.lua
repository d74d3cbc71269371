-- lib/window.lua: spend(log, limit, window, nonce, cost, trim_first), a key's sliding-window rate limit.
--
-- At most `limit` requests of one key are accepted in any `window` ms: the key's sorted set `log`
-- holds the time of each accepted request, and one that would be the limit+1-th within the last
-- window is refused, however the earlier ones were spread. A request of cost n (a batch of n
-- submissions) is n requests at once: accepted whole only if n fit, else refused whole. Redis's
-- own clock is used, so every taskd process agrees. `nonce` is unique to the request (two
-- requests may share a millisecond).
-- The requests that left the window are trimmed before anything else with `trim_first`, else
-- only once the request is accepted, after its ZADD. That order matters under a full Redis
-- (maxmemory): Redis refuses a script's writes only while the script has written nothing, and a
-- trim is a write it lets through. submit.lua spends without trimming first, so that its first
-- write is the ZADD and a full Redis refuses the submit whole (503); window.lua trims first, as it
-- always has, so that a status read still passes its limit then.
-- KEYS: none
-- ARGV: none
-- Returns {allowed (1 or 0), remaining, retry-after ms, reset ms}. The reset the RateLimit field
-- announces is when the oldest request still in the window leaves it (0 with nothing counted); a
-- refused request's wait is until enough have left for its cost (the whole window when its cost is
-- over the limit: it never fits).
local function spend(log, limit, window, nonce, cost, trim_first)
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  -- A request at `gone` or earlier has left the window; the rest are counted (read-only).
  local gone = now - window
  if trim_first then redis.call('ZREMRANGEBYSCORE', log, '-inf', gone) end
  local count = redis.call('ZCOUNT', log, '(' .. gone, '+inf')
  -- When the (n+1)-th oldest request still in the window leaves it.
  local function leaves(n)
    local oldest = redis.call('ZRANGEBYSCORE', log, '(' .. gone, '+inf', 'WITHSCORES', 'LIMIT', n, 1)[2]
    if not oldest then return 0 end
    return math.max(1, tonumber(oldest) + window - now)
  end
  if count + cost > limit then
    local wait = window
    if cost <= limit then wait = leaves(count + cost - limit - 1) end
    return {0, math.max(0, limit - count), wait, leaves(0)}
  end
  for i = 1, cost do redis.call('ZADD', log, now, now .. ':' .. nonce .. ':' .. i) end
  redis.call('ZREMRANGEBYSCORE', log, '-inf', gone)
  redis.call('PEXPIRE', log, window)
  return {1, limit - count - cost, 0, leaves(0)}
end
