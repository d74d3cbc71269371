-- lib/outlive.lua: outlive(task_id, kept, ttl, now_s, later), a completed task's record kept for a
-- waiting task that reads its result later.
--
-- A task with `depends_on` reads its dependencies' results (its `$ref`s, taskd.refs) when it runs,
-- from their records. One that waits, for its time (`run_at`, `delay_seconds`) or for another
-- dependency (scheduled days ahead, say), may run after a completed dependency's record would have
-- expired (`storage.task_ttl` from that one's end, a day): its `$ref`s found nothing and it failed.
-- So the scripts that leave a task waiting with a completed dependency (lib/admit.lua at its
-- submit; lib/ended.lua at that one's end) push the completed record's expiry back to the
-- dependent's own, and its project's index with it (and its event stream, up to a stream's life
-- after its end), never shortened. A
-- record kept past `ttl` this way is counted in its project's stored bytes until its new expiry,
-- as one kept by `keep_for` is (lib/stored.lua), whatever its size.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the keys and values it works on.
-- KEYS: none
-- ARGV: none
--   task_id  the completed task's id
--   kept     seconds from now_s its record must at least be kept
--   ttl      storage.task_ttl, in seconds
--   now_s    now, in seconds
--   later    lib/later.lua's table, which the caller writes
-- Returns nothing.
-- include lib/record.lua
-- include lib/stored.lua
-- include lib/later.lua
local function outlive(task_id, kept, ttl, now_s, later)
  local key = '@TASK_PREFIX@' .. task_id
  kept = tonumber(kept)
  local left = redis.call('TTL', key)
  -- Gone, kept for good, or kept long enough already.
  if left < 0 or left >= kept then return end
  redis.call('EXPIRE', key, kept)
  local f = redis.call('HMGET', key, 'project_id', 'stored_until', 'stored_bytes', 'updated_at')
  keep_later(later, '@PROJECT_PREFIX@' .. f[1], kept)
  -- Its event stream with it, though never past a stream's life after its last event (the end,
  -- `updated_at`): its end expired it with the record's `keep_for` (lib/emit.lua), and a record
  -- kept on for a dependent answered GET …/events with one event made from it, so a client
  -- resuming with the end's id got that event again instead of a 204, and an EventSource
  -- reconnected every few seconds for as long as the record was kept.
  local events = '@TASK_EVENTS_PREFIX@' .. task_id
  local life = math.min(kept, @EVENTS_TTL@ - math.floor(now_s - (tonumber(f[4]) or now_s)))
  local quiet = redis.call('TTL', events)
  if quiet >= 0 and quiet < life then redis.call('EXPIRE', events, life) end
  local until_at = stored_until(now_s, kept)
  if f[2] then
    -- Counted already, by its bytes as it ended: moved, without reading a result of up to
    -- execution.result_max_bytes into this script once for each task that comes to wait for it.
    count_stored(f[1], key, f[3], until_at, f[2], f[3], now_s)
  elseif kept > tonumber(ttl) then
    -- Not counted: a light record (its data and result under lib/stored.lua's threshold).
    count_stored(f[1], key, weight(read_record(key)), until_at, nil, nil, now_s)
  end
end
