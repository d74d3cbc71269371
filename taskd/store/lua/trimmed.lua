-- trimmed.lua: where an event stream starts now that its cap has trimmed it, for a reader that resumes it.
--
-- KEYS[1]  stream  an event stream ({taskd}:events:task:{id} or {taskd}:events:project:{project_id})
-- ARGV: none
-- Returns the id of the stream's oldest entry when entries were trimmed off it (entries-added
-- past its length), else '0-0' (none was, or there is no stream): a reader whose last id is older
-- than that id may have missed entries (none, where the entry trimmed last was its own).
-- XINFO STREAM answers with the stream's first and last entries whole, and an event can carry its
-- task's result (up to execution.result_max_bytes): only the one id leaves Redis.
if redis.call('EXISTS', KEYS[1]) == 0 then return '0-0' end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local field = {}
for i = 1, #info, 2 do field[info[i]] = info[i + 1] end
if field['entries-added'] == field['length'] then return '0-0' end
return field['recorded-first-entry-id']
