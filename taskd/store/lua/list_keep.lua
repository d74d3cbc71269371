-- list_keep.lua: keeps the counts of a listing that read its project's whole index (list.lua's
-- census), for the listings after it (list_look.lua), if they are still true.
--
-- KEYS[1]  events   {taskd}:events:project:{project_id}, the project's event stream
-- KEYS[2]  counts   {taskd}:project_counts:{project_id}: hash of `v` (the version when the listing
--                   began), `u` (when the first record counted expires, in ms of Valkey's
--                   clock; '' for none), `c:<filter key>` (how many tasks match it) and
--                   `k:<filter key>` (how many matched before each stretch of the census, comma
--                   separated)
-- ARGV[1]  version  the version (lib/listed.lua) list_look.lua returned before the census began
-- ARGV[2]  until    `u`
-- ARGV[3]  most_ms  the longest the counts are kept, however long they hold
-- ARGV[4..] fields  the fields, name, value, ...
-- Nothing is kept when an event came since `version` (a submit or a status changed during the
-- census, which may have counted the task before or after it) or a counted record expired.
-- Returns 1 when kept, 0 when not.
-- include lib/listed.lua
local version = listed_version(KEYS[1])
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local life = tonumber(ARGV[3])
if ARGV[2] ~= '' then life = math.min(life, tonumber(ARGV[2]) - now_ms) end
redis.call('DEL', KEYS[2])
if version ~= ARGV[1] or life <= 0 then return 0 end
redis.call('HSET', KEYS[2], 'v', version, 'u', ARGV[2], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[2], life)
return 1
