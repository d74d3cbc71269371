-- take.lua: takes up to `count` due jobs of a queue for one worker and starts their tasks, in one
-- round trip: the worker's poll and its claims in one script.
--
-- The jobs come in the order of arq's set (due time moved earlier by priority, then projects'
-- turns: lib/fair.lua). A started job leaves the set, and its project's next job becomes the head
-- behind the heads already waiting, so it is taken in the same call only when its turn comes
-- before every other due head: the order one poll after another would give, without the chain of
-- round trips that made one project's starts wait for a poll each. Being one script, two workers
-- never take the same job (before, every worker woken by a submit claimed the same head and all
-- but one got `locked`). A head whose project runs `project_limit` tasks stays where it is and is
-- passed over, as is a job another worker holds (start.lua's lock: a host with GPUs claims one
-- job at a time); a job whose task no longer waits for it (ended, cancelled, expired, a newer
-- job) is dropped. At most `scan` jobs are passed over in one call.
-- When the worker still has free slots after the call it waits in {taskd}:idle:{queue} for the
-- next job (lib/wake.lua); when it took its fill and a due job is left, it is taken off that set
-- and the worker idle longest is woken to take the rest.
-- KEYS[1]  queue          {taskd}:queue:{queue}, arq's sorted set of the queue
-- KEYS[2]  running        {taskd}:running:{queue}, the queue's processing tasks (id -> started ms)
-- KEYS[3]  outbox         {taskd}:webhooks:due, the webhook outbox
-- KEYS[4]  idle           {taskd}:idle:{queue}, the queue's idle workers
-- KEYS[5]  metrics        {taskd}:metrics, the shared counters (the wait-time histogram: lib/begin.lua)
-- ARGV[1]  now            now, in seconds (as stored in the record)
-- ARGV[2]  worker_id      the taking worker's id
-- ARGV[3]  now_ms         now, in ms (compared with the jobs' scores)
-- ARGV[4]  count          the most jobs to start: the worker's free slots (at least 1)
-- ARGV[5]  scan           the most jobs to pass over before giving up
-- ARGV[6]  project_limit  limits.concurrent_per_project: the most processing tasks of a project; 0 = no limit
-- ARGV[7]  aging_ms       execution.priority_aging in ms (where the next head goes: lib/fair.lua)
-- ARGV[8]  queue_name     taskd's queue name (the idle worker woken, and the lines: lib/fair.lua)
-- ARGV[9]  recover        '1' when the reply of an earlier call may have been lost: the tasks of
--                         the queue that this worker runs come back too (the worker starts those it
--                         does not know)
-- Each start is lib/begin.lua's, as in start.lua: through lib/fair.lua it reads and writes
-- {taskd}:project_processing:{project_id}, {taskd}:project_waiting:{queue}:{project_id},
-- {taskd}:waiting:{queue} and {taskd}:heads:{queue}; a started task's `started` webhook
-- ({taskd}:webhook:{id}:started) is made due when its webhook_events ask for one.
-- Returns {look, entry, ...}: look is 1 when the worker should take again as soon as one of its
-- slots frees (it took its fill, or passed over a job that may start then), 0 when it waits in the
-- idle set and the next job wakes it; then one entry per started task: {job_id, score, field,
-- value, ...} (the started record).
-- include lib/emit.lua
-- include lib/fair.lua
-- include lib/begin.lua
-- include lib/drop_job.lua
-- include lib/wake.lua
local now, me, now_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local count, scan = tonumber(ARGV[4]), tonumber(ARGV[5])
local limit, aging_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
local taken = {}

local function reply(job, score, record)
  local entry = {job, score}
  for name, value in pairs(record) do
    entry[#entry + 1] = name
    entry[#entry + 1] = value
  end
  return entry
end

local function read(task_key)
  local all = redis.call('HGETALL', task_key)
  local record = {}
  for i = 1, #all, 2 do record[all[i]] = all[i + 1] end
  return record
end

if ARGV[9] == '1' then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local record = read('@TASK_PREFIX@' .. id)
    if record.status == 'processing' and record.worker_id == me and record.job_id then
      taken[#taken + 1] = reply(record.job_id, '0', record)
    end
  end
end

local passed, npassed, started = {}, 0, 0
local left = false  -- a due job is left that this call did not take
while true do
  -- Passed-over jobs stay on the set, in front: read one past them.
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, npassed + 1)
  local job, score
  for i = 1, #due, 2 do
    if not passed[due[i]] then
      job, score = due[i], due[i + 1]
      break
    end
  end
  if not job then break end
  if started >= count or npassed >= scan then
    left = true
    break
  end
  local task_id = string.match(job, '^(.*)%.[^.]*$') or job
  local task_key = '@TASK_PREFIX@' .. task_id
  local record = read(task_key)
  if record.status == 'queued' and record.job_id == job then
    if throttled(record.project_id, limit) then
      passed[job], npassed = true, npassed + 1
    else
      -- Off arq's set first: nothing else may take it (lib/begin.lua does what start.lua does).
      redis.call('ZREM', KEYS[1], job)
      begin(task_key, task_id, job, record, me, now, ARGV[3], aging_ms, {
        running = KEYS[2], metrics = KEYS[5], outbox = KEYS[3],
        started_state = '@WEBHOOK_PREFIX@' .. task_id .. ':started'})
      taken[#taken + 1] = reply(job, score, record)
      started = started + 1
    end
  elseif redis.call('EXISTS', '@IN_PROGRESS_PREFIX@' .. job) == 1 then
    passed[job], npassed = true, npassed + 1
  else
    -- A job that will not run gives its project's turn to the next job in line (start.lua).
    if record.status and record.queue and record.project_id then
      leave_line(task_key, job, now_ms, aging_ms, {record.queue, record.project_id})
    end
    drop_job(task_key, KEYS[1], job)
  end
end

if started < count then
  redis.call('ZADD', KEYS[4], 'NX', now_ms, me)
else
  redis.call('ZREM', KEYS[4], me)
  if left then wake_one(ARGV[8]) end
end
table.insert(taken, 1, (started >= count or npassed > 0) and 1 or 0)
return taken
