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
-- request. The newest entries are looked at one at a time, up to 32: past 32 progress events in a
-- row, the newest entry stands in for the version (any event then moves it). One at a time, as a
-- status event carries its task's result (up to execution.result_max_bytes): read in batches, the
-- status events behind the first were copied into Lua for nothing (24 of a MiB each held Valkey
-- ~40 ms a listing). An event's JSON is cjson's, without spaces: `"type":"status"` is in a status
-- event's and in no progress event's (a quote inside a string value is escaped, and a progress
-- event holds no result).
-- Returns the id ('' when there is no stream) and its time in ms (0 for none).
local function listed_version(stream)
  local newest, after = nil, '+'
  for _ = 1, 32 do
    local entry = redis.call('XREVRANGE', stream, after, '-', 'COUNT', 1)[1]
    if not entry then break end
    newest = newest or entry[1]
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'event' and string.find(fields[i + 1], '"type":"status"', 1, true) then
        return entry[1], tonumber(string.match(entry[1], '^(%d+)'))
      end
    end
    after = '(' .. entry[1]
  end
  if not newest then return '', 0 end
  return newest, tonumber(string.match(newest, '^(%d+)'))
end
