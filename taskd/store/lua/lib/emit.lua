-- lib/emit.lua: emit(task_key, kind), the event that reports a change, in the script that makes it.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the key it works on.
-- KEYS: none
-- ARGV: none
--   task_key  the task's record hash (taskd:task:{id}), already changed
--   kind      the event type: 'status' or 'progress'
--
-- Appends the event (the record's public fields, and the result once completed) to the task's
-- stream (taskd:events:task:{id}) and its project's stream (taskd:events:project:{project_id}),
-- which the SSE endpoints read; both are capped and expire a day after their last event.
-- The result is spliced in as stored: re-encoding it with cjson would turn empty lists into objects.
-- Returns nothing.
local function emit(task_key, kind)
  local f = redis.call('HMGET', task_key, 'task_id', 'project_id', 'task_type', 'status', 'progress',
                       'current_step', 'error', 'attempt', 'updated_at', 'result')
  local event = {type = kind, task_id = f[1], project_id = f[2], task_type = f[3], status = f[4],
                 progress = tonumber(f[5]) or 0, current_step = f[6] or cjson.null, error = f[7] or cjson.null,
                 attempt = tonumber(f[8]) or 0, at = tonumber(f[9]) or cjson.null}
  local data = cjson.encode(event)
  if f[10] and f[4] == 'completed' then data = string.sub(data, 1, -2) .. ',"result":' .. f[10] .. '}' end
  local task_stream = '@TASK_EVENTS_PREFIX@' .. f[1]
  local project_stream = '@PROJECT_EVENTS_PREFIX@' .. f[2]
  redis.call('XADD', task_stream, 'MAXLEN', '~', @TASK_EVENTS_MAXLEN@, '*', 'event', data)
  redis.call('EXPIRE', task_stream, @EVENTS_TTL@)
  redis.call('XADD', project_stream, 'MAXLEN', '~', @PROJECT_EVENTS_MAXLEN@, '*', 'event', data)
  redis.call('EXPIRE', project_stream, @EVENTS_TTL@)
end
