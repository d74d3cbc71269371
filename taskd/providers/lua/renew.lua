-- renew.lua: extends the lease of a provider slot whose request is still running.
--
-- KEYS[1]  slots   {taskd}:provider:{name}:slots, holder -> ms its lease ends
-- ARGV[1]  lease   ms from now the slot stays held without another renewal
-- ARGV[2]  holder  the name the request acquired its slot under
-- Returns 1, or 0 when the slot is no longer held: its lease ended and acquire.lua dropped it
-- (a holder past its lease but still in the set is renewed: no other request has counted it away).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
