-- lib/ended.lua: ended(task_key, metrics_key, outbox_key, counter, per_type, task_id, now_ms, ttl,
-- aging_ms, record, lease, later),
-- what every end of a task (completed, failed, cancelled) also does.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the keys and values it works on.
-- KEYS: none
-- ARGV: none
--   task_key     the task's record hash ({taskd}:task:{id}), already holding its end state
--   metrics_key  the shared counters ({taskd}:metrics)
--   outbox_key   the webhook outbox ({taskd}:webhooks:due)
--   counter      the metrics counter to add one to: completed_tasks, failed_tasks or cancelled_tasks
--   per_type     prefix of a per-task-type counter to add one to ({per_type}:{task type}), or nil
--   task_id      the task's id
--   now_ms       now, in ms: when its webhook is due
--   ttl          seconds the record is kept from now (storage.task_ttl), unless the record has its
--                own `keep_for` (the submission's), which wins
--   aging_ms     execution.priority_aging in ms (lib/fair.lua), for the dependents it queues
--   record       optional: the record's fields by name, end included, when the caller has them
--                (finish.lua); else it is read here
--   lease        optional: the ms until which the calling worker's own webhook sender holds the end's
--                webhook (finish.lua): it is queued with that score instead of due now, and no
--                sender is woken, as the caller sends it as soon as the script returns
--   later        optional: lib/later.lua's table, when the caller ends several tasks in one script
--                (finish.lua) and writes it once they are all ended; else this writes its own at its
--                end. The counts, the project sets' removals and the project stream's expiry go
--                through it (one command for the batch each, not one a task)
--
-- Counts the end, frees the task's place among its project's active tasks
-- ({taskd}:project_active:{project_id}) and processing ones ({taskd}:project_processing:{project_id},
-- the throttle start.lua keeps), queues its webhook when it has a callback_url and its
-- webhook_events include this end (lib/webhook_event.lua; waking the senders on
-- {taskd}:webhooks:wake), keeps the record for its `keep_for` or `ttl` (and the project's index
-- {taskd}:project:{project_id} at least as long, so the task stays in the project's list), takes it off {taskd}:scheduled if it was waiting for its time there and
-- emits a status event. A heavy record's bytes follow its expiry (lib/stored.lua), as do those
-- of a dependent it queues. It deletes the task's run state ({taskd}:run:{id}, taskd.store.run_state)
-- when its record's `run_state` says it has one.
-- A completed task that a dependent still waiting (for its time or its other dependencies) will
-- read when it runs is kept as long as that dependent (lib/outlive.lua).
-- Then it settles the tasks waiting for this one ({taskd}:dependents:{id}, `depends_on`; not read
-- when the record's `dependents` is '0', lib/admit.lua), in the
-- same script so that no end can be lost between the two: when this one completed, it leaves
-- each one's `waiting_for`, and one that waits for nothing more (nor for its `scheduled_for`,
-- which due.lua then looks after) gets its first job, due now
-- (moved earlier by its priority, as taskd.queue.task_queue.job_score does); when this one failed
-- or was cancelled, each one is cancelled with an error naming it, and so on down the chain: a
-- worklist, not recursion, as a chain may be far deeper than Lua's limit of nested calls (~16,000;
-- past it the script stopped half done).
-- Returns true when it queued the task's end's webhook, else false.
-- include lib/emit.lua
-- include lib/enqueue.lua
-- include lib/webhook_event.lua
-- include lib/record.lua
-- include lib/later.lua
-- include lib/stored.lua
-- include lib/outlive.lua
-- One task's end; the dependents it cancels are put on `cancelled` (their ids) for the caller to end.
local function end_one(task_key, metrics_key, outbox_key, counter, per_type, task_id, now_ms, ttl, aging_ms, record,
                       lease, later, cancelled)
  -- The record once, with its end written: what follows reads it from here.
  local r = record or read_record(task_key)
  -- What its runs kept for a next run (taskd.store.run_state, keep.lua marks the record): no run
  -- comes any more. Before the record's bytes are counted below, which the mark is no longer in.
  if r.run_state then
    redis.call('DEL', '@RUN_STATE_PREFIX@' .. task_id)
    redis.call('HDEL', task_key, 'run_state')
    r.run_state = nil
  end
  count(later, counter, 1)
  if per_type then count(later, per_type .. ':' .. r.task_type, 1) end
  local project = r.project_id
  add_to(later, 'SREM', '@ACTIVE_PREFIX@' .. project, task_id)
  add_to(later, 'SREM', '@PROCESSING_PREFIX@' .. project, task_id)
  local webhook = wants_webhook_record(r, (string.gsub(counter, '_tasks$', '')))
  if webhook and lease then
    redis.call('ZADD', outbox_key, lease, task_id)
  elseif webhook then
    redis.call('ZADD', outbox_key, now_ms, task_id)
    redis.call('PUBLISH', '@WEBHOOKS_WAKE@', task_id)
  end
  -- Only a task still waiting for its dependencies or its time has these (due.lua and this
  -- function take it off {taskd}:scheduled and drop its `scheduled_for` together).
  if r.waiting_for or r.scheduled_for then redis.call('HDEL', task_key, 'waiting_for', 'scheduled_for') end
  if r.scheduled_for then redis.call('ZREM', '@SCHEDULED@', task_id) end
  -- Its own `keep_for` decides how long this record stays; `ttl` stays the default for the
  -- dependents settled below.
  local kept = r.keep_for or ttl
  redis.call('EXPIRE', task_key, kept)
  -- The project's index lists the task as long as its record lives. It was kept `ttl` from the
  -- project's last submit, and pushed back at an end only for a `keep_for`: a task that ran (or
  -- waited) for hours left its project's list that long before its record expired, while its
  -- status still answered.
  keep_later(later, '@PROJECT_PREFIX@' .. project, tonumber(kept))
  -- A heavy record (its result may have made it one) is counted until its new expiry; a light one
  -- costs nothing here (lib/stored.lua).
  if r.stored_until or heavy(r, ttl) then
    local now_s = tonumber(now_ms) / 1000
    count_stored(project, task_key, weight(r), stored_until(now_s, tonumber(kept)), r.stored_until,
      r.stored_bytes, now_s)
  end
  emit_record(r, 'status', false, later)

  local status = r.status
  local dependents_key = '@DEPENDENTS_PREFIX@' .. task_id
  local dependents = {}
  -- `dependents` '0': no task has come to wait for this one (lib/admit.lua). A record of a version
  -- before that field has none, and its set is read all the same.
  if r.dependents ~= '0' then
    dependents = redis.call('SMEMBERS', dependents_key)
    if #dependents > 0 then redis.call('DEL', dependents_key) end
  end
  -- now_ms comes from ARGV, a string; the line (lib/fair.lua) compares it with numbers.
  local at_ms = tonumber(now_ms)
  local now = tostring(at_ms / 1000)
  -- The longest a dependent still waiting (for its time, or for its other dependencies) is kept:
  -- it reads this result only when it runs.
  local outlast = 0
  for _, id in ipairs(dependents) do
    local key = '@TASK_PREFIX@' .. id
    local fields = redis.call('HMGET', key, 'status', 'waiting_for', 'queue', 'priority', 'scheduled_for',
      'stored_until', 'stored_bytes')
    -- A dependent cancelled meanwhile, or expired, waits no more.
    if fields[1] == 'queued' and fields[2] then
      if status == 'completed' then
        local waiting = {}
        for _, other in ipairs(cjson.decode(fields[2])) do
          if other ~= task_id then table.insert(waiting, other) end
        end
        if #waiting > 0 or fields[5] then outlast = math.max(outlast, redis.call('TTL', key)) end
        if #waiting > 0 then
          redis.call('HSET', key, 'waiting_for', cjson.encode(waiting))
        elseif fields[5] then
          -- Still waiting for its time too: due.lua queues it then.
          redis.call('HDEL', key, 'waiting_for')
        else
          redis.call('HDEL', key, 'waiting_for')
          redis.call('HSET', key, 'updated_at', now)
          redis.call('EXPIRE', key, ttl)
          if fields[6] then
            -- Its bytes move with its expiry (a dependent shares its dependency's project).
            count_stored(project, key, fields[7], stored_until(at_ms / 1000, tonumber(ttl)), fields[6], fields[7],
              at_ms / 1000)
          end
          local offset = (@PRIORITY_LOW@ - (tonumber(fields[4]) or @PRIORITY_LOW@)) * aging_ms
          enqueue(key, id, fields[3], at_ms - offset, at_ms, aging_ms)
          emit(key, 'status')
        end
      else
        local why = status == 'failed' and "' failed" or "' was cancelled"
        redis.call('HSET', key, 'status', 'cancelled', 'previous_state', 'queued', 'error',
                   "Dependency '" .. task_id .. why, 'cancelled_at', now, 'updated_at', now,
                   'completed_at', now)
        table.insert(cancelled, id)
      end
    end
  end
  if outlast > 0 then outlive(task_id, outlast, ttl, at_ms / 1000, later) end
  return webhook
end

local function ended(task_key, metrics_key, outbox_key, counter, per_type, task_id, now_ms, ttl, aging_ms, record,
                     lease, later)
  local own = later == nil
  later = later or later_writes(metrics_key)
  local cancelled = {}
  local webhook = end_one(task_key, metrics_key, outbox_key, counter, per_type, task_id, now_ms, ttl, aging_ms,
    record, lease, later, cancelled)
  local at_ms = tonumber(now_ms)
  local i = 1
  -- Each id is on the list once: it was `queued` when put there, and is `cancelled` from then on.
  while cancelled[i] do
    local id = cancelled[i]
    end_one('@TASK_PREFIX@' .. id, metrics_key, outbox_key, 'cancelled_tasks', 'cancelled', id, at_ms, ttl,
      aging_ms, nil, nil, later, cancelled)
    i = i + 1
  end
  if own then write_later(later) end
  return webhook
end
