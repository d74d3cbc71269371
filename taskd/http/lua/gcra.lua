-- gcra.lua: spends one request of a key's per-window quota (the generic cell rate algorithm).
--
-- One "theoretical arrival time" (TAT) per key: a request passes if, after adding one emission
-- interval (window / limit), the TAT is at most one window ahead of now. Redis's own clock is
-- used, so every taskd process agrees.
-- KEYS[1]  bucket  taskd:ratelimit:{policy}:{key hash}, the TAT in ms
-- ARGV[1]  limit   requests allowed per window
-- ARGV[2]  window  the window, in ms
-- Returns {allowed (1 or 0), remaining, retry-after ms, reset ms}.
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local interval = window / limit
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > window then
  return {0, 0, math.ceil(new_tat - window - now), math.ceil(tat - now)}
end
-- At a huge limit the interval is below a double's precision at `now`: new_tat == now, PX 0 is refused.
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
return {1, math.floor((window - (new_tat - now)) / interval), 0, math.ceil(new_tat - now)}
