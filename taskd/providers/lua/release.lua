-- release.lua: gives a provider slot back when its request has ended.
--
-- KEYS[1]  slots   {taskd}:provider:{name}:slots, holder -> ms its lease ends
-- ARGV[1]  holder  the name the request acquired its slot under
-- Returns 1, or 0 when the slot was not held (its lease had ended and it was dropped).
return redis.call('ZREM', KEYS[1], ARGV[1])
