-- lib/listed.lua: listed_version(stream), what a project's listing counts are kept against: the id
-- of the newest status event on the project's event stream.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the key it works on.
-- KEYS: none
-- ARGV: none
--   stream  {taskd}:events:project:{project_id}
-- Every submit and every change of a task's status appends a status event (lib/emit.lua), so a
-- newer one means the counts may have changed; a progress event changes nothing a listing counts,
-- and a project whose tasks report progress each second would otherwise be counted again at each
-- request. The newest entries are looked at, 1, then 7, then 24 more: past 32 progress events in a
-- row, the newest entry stands in for the version (any event then moves it). An event's JSON is
-- cjson's, without spaces: `"type":"status"` is in a status event's and in no progress event's (a
-- quote inside a string value is escaped, and a progress event holds no result).
-- Returns the id ('' when there is no stream) and its time in ms (0 for none).
local function listed_version(stream)
  local newest, after = nil, '+'
  for _, count in ipairs({1, 7, 24}) do
    local entries = redis.call('XREVRANGE', stream, after, '-', 'COUNT', count)
    for _, entry in ipairs(entries) do
      newest = newest or entry[1]
      local fields = entry[2]
      for i = 1, #fields, 2 do
        if fields[i] == 'event' and string.find(fields[i + 1], '"type":"status"', 1, true) then
          newest = entry[1]
          return newest, tonumber(string.match(newest, '^(%d+)'))
        end
      end
    end
    if #entries < count then break end
    after = '(' .. entries[#entries][1]
  end
  if not newest then return '', 0 end
  return newest, tonumber(string.match(newest, '^(%d+)'))
end
