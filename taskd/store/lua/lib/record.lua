-- lib/record.lua: read_record(task_key) and record_reply(head, record), a task record as a Lua table
-- and back into a script's reply.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the key it reads.
-- KEYS: none
-- ARGV: none
--   task_key  the task's record hash ({taskd}:task:{id})
--   head      the reply's first values, a list, which the record's fields are appended to
--   record    the record's fields by name
-- Returns: read_record the record's fields by name, in one HGETALL (an empty table when the record is
-- gone); record_reply `head` followed by name, value, ... of every field.
local function read_record(task_key)
  local all = redis.call('HGETALL', task_key)
  local record = {}
  for i = 1, #all, 2 do record[all[i]] = all[i + 1] end
  return record
end

local function record_reply(head, record)
  for name, value in pairs(record) do
    head[#head + 1] = name
    head[#head + 1] = value
  end
  return head
end
