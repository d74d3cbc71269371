-- lib/admit.lua: the steps of admitting and storing one new task, shared by submit.lua (one task)
-- and batch.lua (many, checked all before any is written, so a refusal writes nothing).
--
-- Library functions: the scripts that include them get them prepended, so they read no KEYS or
-- ARGV of their own; their callers pass the keys and values they work on.
-- KEYS: none
-- ARGV: none
--   unmet(project, depends_on, pending)     the dependencies not yet completed (the task's
--                                            waiting_for), or nil, id, why for one it may not have
--     pending   id -> project of the tasks the same script stores before this one (batch.lua);
--               each counts as a queued task of that project
--   queued(project, at)                     how many of a project's tasks wait (queued); when
--                                            that reaches `at`, ids whose task is gone are
--                                            dropped first (at most once a minute: lib/prune.lua);
--                                            below `at`, a count at least as large (under `at`
--                                            too) may stand in for it: the tasks queued and
--                                            running together, read once a script run and counted
--                                            on as store() adds to them
--   durations(metrics_key, task_type, read) the type's past durations {sum, count} as stored,
--                                            read once a type per script (`read` keeps them by
--                                            type): nothing a submit writes changes them
--   store(task, later)                      writes the task; its counts and its project's
--                                            index's, active set's and stream's expiries go
--                                            through `later` (lib/later.lua), which the caller
--                                            writes once it has stored all its tasks
--     task: key, id, project, project_key, active_key, created_ms, ttl, fields (name, value, ...),
--           waiting_for, job_id, score, aging_ms, queue, task_type,
--           scheduled_ms (when it may queue, in ms; 0 or nil: now), unwoken (true
--           when the caller starts the queue's next job itself, for a worker it knows is idle:
--           no other worker is woken for it), straight (true when the caller starts this very
--           task next, as lib/fair.lua's starts_straight found: its job goes in no line, on no
--           set and is no head, and lib/begin.lua starts it with `outside`), stored (a heavy
--           record's bytes, lib/stored.lua's weight, counted in its project's
--           {taskd}:stored:{project_id} until its expiry; nil for a light one)
--   by_name(fields)                         fields given as name, value, ... by name
-- Returns: unmet the list of ids (or nil, id, why: 'unknown', 'project', 'failed' or
-- 'cancelled'); queued a count; by_name a table; store the task's 1-based queue position (lib/fair.lua's place; 1
-- for a straight one) and its record's fields by name, as written.
-- A task queued now has its job in the record: `job_id`, and `enqueued_ms` (when it could start,
-- for the wait-time histogram: lib/begin.lua), its creation time; arq's job definition is not
-- written, as nothing reads it (docs/development.md, "arq, as it is").
-- A task with dependencies not yet completed
-- is stored queued with `waiting_for` (a JSON list of them) and no job (its `job_id` left out,
-- `enqueues` 0), and added to each one's {taskd}:dependents:{id}; lib/ended.lua queues it when the
-- last one completes. A task scheduled for later is stored the same way, queued with
-- `scheduled_for` and no job, and added to {taskd}:scheduled, its record (and the project's index
-- and active set) kept until `ttl` past its time; due.lua queues it when its time comes. Until then
-- it is in no line, so it holds up no other task of its project and counts in no queue position.
-- Either way its position is 0. Any task's completed dependencies are kept as long as it
-- (lib/outlive.lua), for its `$ref`s to read their results when it runs.
-- Every record starts with `dependents` '0': no task waits for it yet. A task that comes to wait
-- for it sets that to '1' as it joins its {taskd}:dependents:{id}, so the end of a task nothing
-- waits for reads no dependents' set (lib/ended.lua).
-- include lib/emit.lua
-- include lib/fair.lua
-- include lib/wake.lua
-- include lib/later.lua
-- include lib/prune.lua
-- include lib/stored.lua
-- include lib/outlive.lua

local function unmet(project, depends_on, pending)
  local waiting_for = {}
  for _, id in ipairs(depends_on) do
    if pending[id] then
      if pending[id] ~= project then return nil, id, 'project' end
      table.insert(waiting_for, id)
    else
      local dependency = redis.call('HMGET', '@TASK_PREFIX@' .. id, 'status', 'project_id')
      if not dependency[1] then return nil, id, 'unknown' end
      if dependency[2] ~= project then return nil, id, 'project' end
      if dependency[1] == 'failed' or dependency[1] == 'cancelled' then return nil, id, dependency[1] end
      if dependency[1] ~= 'completed' then table.insert(waiting_for, id) end
    end
  end
  return waiting_for
end

-- A project's active set's size as this script run read it, plus the tasks it has stored since
-- (active_key -> count): the submits of one call read it once a project, not once each.
local active_counted = {}

local function queued(project, at)
  local active_key = '@ACTIVE_PREFIX@' .. project
  -- Fewer tasks than `at` queued and running together: fewer than `at` wait, whatever runs. The
  -- callers only compare with `at`, so that count stands in for the waiting one (one SCARD less).
  local active = active_counted[active_key]
  if active == nil then
    active = redis.call('SCARD', active_key)
    active_counted[active_key] = active
  end
  if active < at then return active end
  -- Below, ended tasks may leave the set: it is read again next time.
  active_counted[active_key] = nil
  local processing_key = '@PROCESSING_PREFIX@' .. project
  local waiting = active - redis.call('SCARD', processing_key)
  if waiting < at or not prune_due('@ACTIVE_PRUNED_PREFIX@' .. project) then return waiting end
  for _, id in ipairs(redis.call('SMEMBERS', active_key)) do
    local status = redis.call('HGET', '@TASK_PREFIX@' .. id, 'status')
    if status ~= 'queued' and status ~= 'processing' then redis.call('SREM', active_key, id) end
  end
  return redis.call('SCARD', active_key) - redis.call('SCARD', processing_key)
end

local function durations(metrics_key, task_type, read)
  if not read[task_type] then
    read[task_type] = redis.call('HMGET', metrics_key, 'duration_sum:' .. task_type, 'duration_count:' .. task_type)
  end
  return read[task_type]
end

local function by_name(fields)
  local named = {}
  for i = 1, #fields, 2 do named[fields[i]] = fields[i + 1] end
  return named
end

-- A project's index loses the ids of gone records only when it is listed (list.lua), and every
-- submit pushes its expiry back: a project given a task within every `ttl` and never listed kept
-- every id it ever had (a steady pipeline: tens of MB a month, and a first listing that reads them
-- all). So at most once a PRUNE_EVERY_MS a submit reads a stretch of the ids created more than
-- `ttl` ago (so most are gone) and drops those whose record is gone: INDEX_PRUNE_BATCH of them,
-- from a rank that moves with the submit's time, so that old records still kept (a `keep_for`, a
-- task scheduled far ahead) cannot hold the stretch in one place while gone ids pile up behind.
-- One look a project a script run: a batch of a project's tasks asks once.
local index_looked = {}

local function prune_index(project, index, before_ms)
  if index_looked[project] then return end
  index_looked[project] = true
  if not prune_due('@PROJECT_PRUNED_PREFIX@' .. project) then return end
  local old = redis.call('ZCOUNT', index, '-inf', '(' .. before_ms)
  if old == 0 then return end
  local first, count = 0, math.min(old, @INDEX_PRUNE_BATCH@)
  if old > count then first = before_ms % (old - count + 1) end
  local gone = {}
  for _, id in ipairs(redis.call('ZRANGE', index, first, first + count - 1)) do
    if redis.call('EXISTS', '@TASK_PREFIX@' .. id) == 0 then gone[#gone + 1] = id end
  end
  if #gone > 0 then redis.call('ZREM', index, unpack(gone)) end
end

local function store(task, later)
  local scheduled_ms = tonumber(task.scheduled_ms) or 0
  local deferred = #task.waiting_for > 0 or scheduled_ms > 0
  -- The record in one HSET. A deferred task has no job yet: no `job_id`, `enqueues` 0.
  local fields, named = {'dependents', '0'}, {dependents = '0'}
  for i = 1, #task.fields, 2 do
    local name, value = task.fields[i], task.fields[i + 1]
    if not (deferred and (name == 'job_id' or name == 'enqueues')) then
      fields[#fields + 1] = name
      fields[#fields + 1] = value
      named[name] = value
    end
  end
  if deferred then
    fields[#fields + 1] = 'enqueues'
    fields[#fields + 1] = '0'
    if #task.waiting_for > 0 then
      fields[#fields + 1] = 'waiting_for'
      fields[#fields + 1] = cjson.encode(task.waiting_for)
    end
  else
    fields[#fields + 1] = 'enqueued_ms'
    fields[#fields + 1] = task.created_ms
    named.enqueued_ms = task.created_ms
  end
  -- Kept `ttl`; a task scheduled for later while it waits for its time (up to
  -- limits.max_schedule_ahead) and `ttl` after, as a task queued then would be; a task waiting for
  -- others at least while their records last (one scheduled days ahead keeps it waiting that long),
  -- so it is still there when they end: their end queues it, and keeps it `ttl` from then, or
  -- cancels it. A minute over theirs, not `ttl`: down a chain that would add up, a day a link.
  local kept = tonumber(task.ttl)
  if scheduled_ms > 0 then kept = kept + math.ceil((scheduled_ms - tonumber(task.created_ms)) / 1000) end
  for _, id in ipairs(task.waiting_for) do
    kept = math.max(kept, redis.call('TTL', '@TASK_PREFIX@' .. id) + 60)
  end
  -- A task keeps its completed dependencies as long as itself, for it to read their results when it
  -- runs (lib/outlive.lua): later than theirs would have lasted if it waits for its time or its other
  -- dependencies, or if one ended all but minutes of `ttl` ago and it waits in a line longer than
  -- that (live.lua renews them with it only from its first renewal); those not completed yet keep
  -- them at their end (lib/ended.lua).
  if named.depends_on then
    local waits = {}
    for _, id in ipairs(task.waiting_for) do waits[id] = true end
    for _, id in ipairs(cjson.decode(named.depends_on)) do
      if not waits[id] then outlive(id, kept, task.ttl, tonumber(task.created_ms) / 1000, later) end
    end
  end
  if task.stored then
    -- Counted until its expiry, which its record says, so that a renewal can move it.
    local now_s = tonumber(task.created_ms) / 1000
    local until_at = stored_until(now_s, kept)
    fields[#fields + 1] = 'stored_bytes'
    fields[#fields + 1] = tostring(task.stored)
    fields[#fields + 1] = 'stored_until'
    fields[#fields + 1] = until_at
    count_stored(task.project, nil, task.stored, until_at, nil, nil, now_s)
  end
  redis.call('HSET', task.key, unpack(fields))
  redis.call('EXPIRE', task.key, kept)
  -- The project's index and active set are kept at least as long, and no shorter than they were: a
  -- task of the project kept longer (scheduled days ahead, or ended with a long `keep_for`,
  -- lib/ended.lua) stays in its list.
  redis.call('ZADD', task.project_key, task.created_ms, task.id)
  prune_index(task.project, task.project_key, math.floor(tonumber(task.created_ms) - tonumber(task.ttl) * 1000))
  keep_later(later, task.project_key, kept)
  redis.call('SADD', task.active_key, task.id)
  if active_counted[task.active_key] then active_counted[task.active_key] = active_counted[task.active_key] + 1 end
  keep_later(later, task.active_key, kept)
  count(later, 'total_tasks', 1)
  count(later, 'submitted:' .. task.task_type, 1)
  local position = 0
  if deferred then
    for _, id in ipairs(task.waiting_for) do
      local dependents = '@DEPENDENTS_PREFIX@' .. id
      redis.call('SADD', dependents, task.id)
      -- As long as the longest-kept task waiting in it, read when this dependency ends.
      if redis.call('TTL', dependents) < kept then redis.call('EXPIRE', dependents, kept) end
      redis.call('HSET', '@TASK_PREFIX@' .. id, 'dependents', '1')
    end
    if scheduled_ms > 0 then redis.call('ZADD', '@SCHEDULED@', scheduled_ms, task.id) end
  elseif task.straight then
    position = 1
  else
    -- The queue's heads once for this call's submits: the line's head here, the position below
    -- (unless too many projects wait for that: lib/fair.lua's few_heads).
    if few_heads(task.queue) then all_heads(task.queue) end
    local k = wait_in_line(task.key, task.job_id, tonumber(task.score), tonumber(task.created_ms),
      tonumber(task.aging_ms), named)
    -- Behind its project's head, the job is not on arq's set: no worker can take it yet, and the
    -- head's start puts it there (lib/take.lua takes it in the same call; start.lua wakes a worker).
    if not task.unwoken and not k then wake_one(task.queue) end
    position = place(task.queue, task.project, task.job_id, task.created_ms, k)
  end
  emit_record(named, 'status', false, later)
  return position, named
end
