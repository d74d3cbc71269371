-- due.lua: queues the scheduled tasks whose time has come (`run_at`, `delay_seconds`).
--
-- Every taskd process runs it on a short timer (taskd.engine.scheduled); one script takes each due
-- task off {taskd}:scheduled and queues it, so two processes never queue one task twice, and a
-- restart loses nothing (the schedule is in Redis, not in a timer).
-- KEYS[1]  scheduled  {taskd}:scheduled, the tasks waiting for their time (task id -> due ms)
-- ARGV[1]  now_ms     now, in ms
-- ARGV[2]  aging_ms   execution.priority_aging in ms (lib/fair.lua)
-- ARGV[3]  batch      the most tasks queued in one call (the rest wait for the next)
-- ARGV[4]  ttl        seconds a queued task's record is kept from now (storage.task_ttl)
-- A due task leaves `scheduled_for` and gets its first job, due now and moved earlier by its
-- priority (as taskd.queue.task_queue.job_score does), in its project's line (lib/enqueue.lua), so
-- priority and fair turns apply from then. One still waiting for dependencies (`waiting_for`) only
-- leaves `scheduled_for`: lib/ended.lua queues it when the last one completes. A queued task's
-- record is kept `ttl` from now, as a fresh submit's is, and a heavy record's bytes are counted until
-- then (lib/stored.lua). A task that ended
-- (cancelled) or expired meanwhile is only taken off the set.
-- Returns {queued, taken}: how many tasks were queued, and how many were taken off the set (the
-- ones waiting for dependencies, ended or expired too): `taken` equal to `batch` says more may be due.
-- include lib/emit.lua
-- include lib/enqueue.lua
-- include lib/stored.lua
local now_ms = tonumber(ARGV[1])
local aging_ms = tonumber(ARGV[2])
local now = tostring(now_ms / 1000)
local queued = 0
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local key = '@TASK_PREFIX@' .. id
  local fields = redis.call('HMGET', key, 'status', 'scheduled_for', 'waiting_for', 'queue', 'priority',
    'project_id', 'stored_until', 'stored_bytes')
  if fields[1] == 'queued' and fields[2] then
    redis.call('HDEL', key, 'scheduled_for')
    if not fields[3] then
      redis.call('HSET', key, 'updated_at', now)
      redis.call('EXPIRE', key, ARGV[4])
      if fields[7] then
        count_stored(fields[6], key, fields[8], stored_until(now_ms / 1000, tonumber(ARGV[4])), fields[7], fields[8],
          now_ms / 1000)
      end
      local offset = (@PRIORITY_LOW@ - (tonumber(fields[5]) or @PRIORITY_LOW@)) * aging_ms
      enqueue(key, id, fields[4], now_ms - offset, now_ms, aging_ms)
      queued = queued + 1
    end
    emit(key, 'status')
  end
end
return {queued, #due}
