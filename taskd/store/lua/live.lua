-- live.lua: keeps the records of tasks still queued or processing from expiring.
--
-- A record is kept storage.task_ttl from its submit (lib/admit.lua) and renewed when its task ends
-- (lib/ended.lua). Before, nothing renewed it in between: a task that waited behind a backlog, or
-- ran, longer than that lost its record on the way. Its status, listing and cancel said 404 while
-- its run went on, and its end, result and webhook were dropped. Every taskd process passes the ids
-- of each queue's waiting and running tasks here (taskd.engine.keeper), often enough that a live
-- record is renewed, to `ttl` from now, before it has `below` seconds left; and with it what lives
-- as long as it: its run state ({taskd}:run:{id}), its event stream (kept `events_ttl` from then
-- when under half of that is left, whether or not the record was renewed), the delivery state of its `started` and
-- `progress` webhooks, its project's index and active set (pushed back, never shortened), and the
-- set of the tasks waiting for it to complete (`depends_on`: {taskd}:dependents:{id}). Those tasks
-- are in no queue yet: their ids are returned, and the caller passes them here in turn (with those
-- waiting for them), a batch at a time. Walked here, one task's dependents (tens of thousands with
-- the caps off) and theirs held Valkey in a single call, at every look of every process. A heavy
-- record's bytes are counted until its new expiry (lib/stored.lua).
-- A renewed task keeps its completed dependencies at least as long (lib/outlive.lua): it reads their
-- results (its `$ref`s) at each run, the first of which may come more than `ttl` after they ended
-- (it waits for another that runs or waits for days; a line days long), and a later one (a retry,
-- a run handed back at a stop) after a run that long; their records were kept only `ttl` from
-- their end, or from its submit.
-- KEYS[1]  partition  a name in the tasks' partition's slot ({taskd}:none, taskd.keys.no_key), never
--                     read or written: each task's key is built here from its id, in that partition
-- ARGV[1]  ttl        storage.task_ttl, in seconds: how long a renewed record is kept from now
-- ARGV[2]  below      seconds: a live record with less than this left is renewed
-- ARGV[3]  now_s      now, in seconds
-- ARGV[4..] ids       the ids of the tasks in a queue's waiting or running set, or of tasks waiting
--                     for one of them (an earlier call's reply)
-- Returns {how many records were renewed, then the ids of the tasks waiting for the live ones}.
-- include lib/stored.lua
-- include lib/later.lua
-- include lib/outlive.lua
local ttl, below, now_s = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local renewed = 0
local seen = {}
-- The project indexes that outlive() pushes back, written at the end.
local later = later_writes(nil)

-- A key that expires is kept at least `ttl` from now; a key that is gone (-2) or kept for good
-- (-1) is left as it is.
local function push_back(key)
  local left = redis.call('TTL', key)
  if left >= 0 and left < ttl then redis.call('EXPIRE', key, ttl) end
end

-- Renews one live record with less than `below` seconds left, and what goes with it. Returns the
-- ids of the tasks waiting for it (whatever its own record had left: theirs may have less).
local function keep(id)
  if seen[id] then return {} end
  seen[id] = true
  local key = '@TASK_PREFIX@' .. id
  local left = redis.call('TTL', key)
  if left == -2 then return {} end
  local f = redis.call('HMGET', key, 'status', 'project_id', 'dependents', 'stored_until', 'stored_bytes',
    'depends_on')
  if f[1] ~= 'queued' and f[1] ~= 'processing' then return {} end
  -- Its event stream expires a day (at most) after its last event: one that waited or ran silent
  -- that long lost the events a client reading its stream starts with (its queued and processing
  -- ones), and one that then read it got nothing until the next event.
  local events = '@TASK_EVENTS_PREFIX@' .. id
  local quiet = redis.call('TTL', events)
  if quiet >= 0 and quiet < @EVENTS_TTL@ / 2 then redis.call('EXPIRE', events, @EVENTS_TTL@) end
  if left >= 0 and left < below then
    redis.call('EXPIRE', key, ttl)
    renewed = renewed + 1
    if f[4] then count_stored(f[2], key, f[5], stored_until(now_s, ttl), f[4], f[5], now_s) end
    push_back('@RUN_STATE_PREFIX@' .. id)
    push_back('@WEBHOOK_PREFIX@' .. id .. ':started')
    push_back('@WEBHOOK_PREFIX@' .. id .. ':progress')
    push_back('@PROJECT_PREFIX@' .. f[2])
    push_back('@ACTIVE_PREFIX@' .. f[2])
    if f[6] then
      for _, dependency in ipairs(cjson.decode(f[6])) do
        if redis.call('HGET', '@TASK_PREFIX@' .. dependency, 'status') == 'completed' then
          outlive(dependency, ttl, ttl, now_s, later)
        end
      end
    end
  end
  -- A record of a version before the field may have dependents too.
  if f[3] == '0' then return {} end
  local dependents = '@DEPENDENTS_PREFIX@' .. id
  push_back(dependents)
  return redis.call('SMEMBERS', dependents)
end

-- Each id on its own: a record broken by hand (no project_id, a stored_until that is not a
-- number) raises an error for itself alone, not for the ids after it.
local reply = {0}
for i = 4, #ARGV do
  local ok, others = pcall(keep, ARGV[i])
  if ok then
    for _, other in ipairs(others) do reply[#reply + 1] = other end
  end
end
write_later(later)
reply[1] = renewed
return reply
