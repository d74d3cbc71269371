-- lib/stored.lua: what a project's heavy records hold, by when they are gone, for
-- limits.stored_bytes_per_project (docs/production.md, "Memory a task takes").
--
-- A record is heavy when the caller's data it stores (`task_data` and `metadata` as written, then
-- its `result`, or its `error` with its `traceback` and `last_error`; and its `trace_context`; and,
-- until it ends, the result its type expects, `result_estimate`, reserved as a result) is over STORED_FREE_BYTES, or when it is kept longer than storage.task_ttl: a `keep_for` over it,
-- or a `run_at` further ahead. Such a record counts its bytes (weight) in
-- {taskd}:stored:{project_id}, a hash of the second by which it is gone (its expiry rounded up,
-- stored_until) -> the bytes of the heavy records gone by then. The record keeps
-- where it is counted (`stored_until`, `stored_bytes`), so each script that renews its expiry (its
-- end, lib/ended.lua; its queueing after its dependencies or its time, lib/ended.lua and due.lua)
-- moves its bytes to its new second, and a record counted once is counted until it is gone. The
-- project's total is the sum of the fields not yet past (stored_total, which drops the past ones,
-- as does each new field); the hash expires with its latest field. A light record is not counted at all and costs no command
-- here: what light records hold is the sizing formula's (rate x size x task_ttl).
-- A record deleted before its expiry (by an operator, a FLUSHDB, an eviction) stays counted until
-- its second: the count may be over, never under, what the records hold.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its callers pass the keys and values they work on.
-- KEYS: none
-- ARGV: none
--   record     a task record's fields by name (as it is written, or as it ended)
--   ttl        storage.task_ttl, in seconds
--   project    the record's project id
--   now_s      now, in seconds
--   kept       seconds the record is kept from now_s
--   budget     limits.stored_bytes_per_project
--   total, live  stored_total's answer
--   size       a heavy record's bytes (weight)
--   task_key   its record hash ({taskd}:task:{id}), or nil when the caller writes the fields itself
--   until_at, was_until, was_size  the second it is counted in now, and where it was counted
--              before (its `stored_until` and `stored_bytes`), nil for a record not counted yet
-- Returns: heavy true or false; weight the record's bytes (its fields' names and values, and
-- STORED_RECORD_OVERHEAD; an ended one's result, or error, three times); stored_until a second, as
-- text; stored_total the project's bytes and its fields not yet past, {second, bytes}, soonest
-- first; stored_wait the seconds until enough of them are past for `size` more to fit, or nil if it
-- never fits; count_stored nothing.

-- The bytes a task's type expects its result to hold as JSON (`result_estimate`, from its input at
-- submit: taskd.tasks.spec.TaskType.result_estimate), until it ends: then its real result (or error)
-- is in the record instead, and an ended record counts that alone.
local function reserved(record)
  if record.status == 'queued' or record.status == 'processing' then return tonumber(record.result_estimate) or 0 end
  return 0
end

local function heavy(record, ttl)
  -- A failure's traceback (up to 32,000 characters, its exception's message and the ones it was
  -- raised from in full) and the error a retry followed are kept as its error is; with tracing on,
  -- a record from before taskd dropped a caller's `tracestate` holds it in its trace context (up to 8 KiB).
  local data = #(record.task_data or '') + #(record.metadata or '') + #(record.result or '')
    + #(record.error or '') + #(record.traceback or '') + #(record.last_error or '')
    + #(record.trace_context or '') + reserved(record)
  if data > @STORED_FREE_BYTES@ then return true end
  ttl = tonumber(ttl)
  if (tonumber(record.keep_for) or 0) > ttl then return true end
  local scheduled, created = tonumber(record.scheduled_for), tonumber(record.created_at)
  return scheduled ~= nil and created ~= nil and scheduled - created > ttl
end

local function weight(record)
  local size = @STORED_RECORD_OVERHEAD@
  for name, value in pairs(record) do size = size + #name + #value end
  -- An ended task's event carries its result (completed) or its error, on its task's and its
  -- project's event streams (lib/emit.lua), which live a day past it (the project's longer while it
  -- has events): two more copies, each with the event's other fields (ids, status, times: under 256).
  local carried = record.status == 'completed' and record.result or record.error
  if carried then size = size + 2 * (#carried + 256) end
  -- A result not there yet that its type expects to be large is counted as that result will be:
  -- in the record (its field's name too) and on the two streams.
  local expected = reserved(record)
  if expected > 0 then size = size + #'result' + expected + 2 * (expected + 256) end
  return size
end

local function stored_until(now_s, kept)
  -- A power of two near 1/STORED_SLICES of `kept`: records kept about as long share few seconds.
  local width = 1
  while width * @STORED_SLICES@ < kept do width = width * 2 end
  return string.format('%d', math.ceil((now_s + kept) / width) * width)
end

local function stored_total(project, now_s)
  local key = '@STORED_PREFIX@' .. project
  local all = redis.call('HGETALL', key)
  local total, live, past = 0, {}, {}
  for i = 1, #all, 2 do
    local at = tonumber(all[i])
    if at <= now_s then
      past[#past + 1] = all[i]
    else
      total = total + tonumber(all[i + 1])
      live[#live + 1] = {at, tonumber(all[i + 1])}
    end
  end
  -- In chunks: Lua's unpack() takes at most ~8000 values.
  for first = 1, #past, 1000 do redis.call('HDEL', key, unpack(past, first, math.min(first + 999, #past))) end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  return total, live
end

local function stored_wait(total, live, size, budget, now_s)
  for _, field in ipairs(live) do
    total = total - field[2]
    if total + size <= budget then return math.max(1, math.ceil(field[1] - now_s)) end
  end
  return nil
end

local function count_stored(project, task_key, size, until_at, was_until, was_size, now_s)
  local key = '@STORED_PREFIX@' .. project
  if was_until then
    -- Its old second may be gone already (dropped as past): the field made below 0 goes too.
    if redis.call('HINCRBY', key, was_until, -tonumber(was_size)) <= 0 then redis.call('HDEL', key, was_until) end
  end
  if redis.call('HINCRBY', key, until_at, size) == tonumber(size) then
    -- A second new to the hash (a few a day): its past ones go now, so that a project no submit
    -- reads (its heavy records all large results, or no budget set) does not pile them up.
    stored_total(project, now_s)
  end
  local life = math.ceil(tonumber(until_at) - now_s)
  if redis.call('TTL', key) < life then redis.call('EXPIRE', key, life) end
  if task_key then redis.call('HSET', task_key, 'stored_bytes', size, 'stored_until', until_at) end
end
