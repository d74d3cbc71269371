-- lib/emit.lua: emit(task_key, kind), the event that reports a change, in the script that makes it;
-- emit_record(record, kind, kept, later) the same from the record's fields (name -> value) the caller
-- already has.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the key it works on.
-- KEYS: none
-- ARGV: none
--   task_key  the task's record hash ({taskd}:task:{id}), already changed
--   kind      the event type: 'status' or 'progress'
--   record    a table of the record's fields by name, as stored (strings); absent fields nil
--   kept      true: the streams' expiry is left as it is (see below)
--   later     optional: lib/later.lua's table; the project stream's expiry is set through it, once
--             for all the events of the script's batch on that stream (finish.lua)
--
-- Appends the event (the record's public fields, and the result once completed) to the task's
-- stream ({taskd}:events:task:{id}) and its project's stream ({taskd}:events:project:{project_id}),
-- which the SSE endpoints read; both are capped and expire a day after their last event (an ended
-- task's own stream sooner, with its record, when its `keep_for` is shorter; a task's
-- end, and an event carrying a large result or error, also drops its project's events older than
-- that), except
-- that a start (start.lua passes `kept`) does not push their expiry back: the queued event before
-- it set one and the event that follows it (an end, a retry, a hand-back) sets it again: two
-- EXPIREs less per task. (A stream that expired while its task waited over a day to start is made
-- again by the start's event and gets its expiry back at the task's next event.)
-- The result is spliced in as stored: re-encoding it with cjson would turn empty lists into objects.
-- Returns nothing.
-- include lib/later.lua
local function emit_record(r, kind, kept, later)
  local event = {type = kind, task_id = r.task_id, project_id = r.project_id, task_type = r.task_type,
                 status = r.status, progress = tonumber(r.progress) or 0, current_step = r.current_step or cjson.null,
                 error = r.error or cjson.null, attempt = tonumber(r.attempt) or 0,
                 at = tonumber(r.updated_at) or cjson.null}
  local data = cjson.encode(event)
  if r.result and r.status == 'completed' then data = string.sub(data, 1, -2) .. ',"result":' .. r.result .. '}' end
  local task_stream = '@TASK_EVENTS_PREFIX@' .. r.task_id
  local project_stream = '@PROJECT_EVENTS_PREFIX@' .. r.project_id
  redis.call('XADD', task_stream, 'MAXLEN', '~', @TASK_EVENTS_MAXLEN@, '*', 'event', data)
  redis.call('XADD', project_stream, 'MAXLEN', '~', @PROJECT_EVENTS_MAXLEN@, '*', 'event', data)
  -- The project's stream is capped by count alone and pushed back by each of its events: a project
  -- that had fewer than ~PROJECT_EVENTS_MAXLEN events a day kept its tasks' results, errors and
  -- steps on past their records (`storage.task_ttl`, a day) for as long as it went on, and replayed
  -- them to any reader resuming from an early Last-Event-ID; and a busy project held its past days'
  -- large results while its budget (lib/stored.lua) was given back for each. So a task's end (and
  -- an event carrying a large result or error: a retry's error) drops its project's events older
  -- than a stream's life, exactly (`~` keeps a whole node of them, which in a quiet project can be
  -- days old), once per stream in a script's batch (finish.lua): one command a task's end at most.
  local carried = r.status == 'completed' and r.result or r.error
  local at = tonumber(r.updated_at)
  local ended = r.status == 'completed' or r.status == 'failed' or r.status == 'cancelled'
  if at and (ended or (carried and #carried > @STORED_FREE_BYTES@))
      and not (later and later.trimmed[project_stream]) then
    if later then later.trimmed[project_stream] = true end
    redis.call('XTRIM', project_stream, 'MINID', string.format('%d', math.floor((at - @EVENTS_TTL@) * 1000)))
  end
  if not kept then
    -- An ended task's stream is read only while its record lives (GET …/events answers 404 once it
    -- is gone): kept no longer than the record's `keep_for`, which its caller may have shortened so
    -- that its result goes sooner. It stayed the day in Redis, and in its append-only file.
    local life = @EVENTS_TTL@
    if ended and r.keep_for then life = math.min(life, tonumber(r.keep_for) or life) end
    redis.call('EXPIRE', task_stream, life)
    if later then
      expire_later(later, project_stream, @EVENTS_TTL@)
    else
      redis.call('EXPIRE', project_stream, @EVENTS_TTL@)
    end
  end
end

local EVENT_FIELDS = {'task_id', 'project_id', 'task_type', 'status', 'progress', 'current_step', 'error',
                      'attempt', 'updated_at', 'result'}

local function emit(task_key, kind)
  local f = redis.call('HMGET', task_key, unpack(EVENT_FIELDS))
  local r = {}
  for i, name in ipairs(EVENT_FIELDS) do r[name] = f[i] or nil end
  emit_record(r, kind)
end
