-- take.lua: takes up to `count` due jobs of a queue for one worker and starts their tasks, in one
-- round trip: the worker's poll and its claims in one script.
--
-- Which jobs, in what order, and which are passed over or dropped: lib/take.lua (at most `scan`
-- passed over in one call). Being one script, two workers never take the same job (before, every
-- worker woken by a submit claimed the same head and all but one got `locked`).
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
-- ARGV[4]  count          the most jobs to start: the worker's free slots (at least 1; with `recover`
--                         0 too, when the tasks a lost reply started may fill them)
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
-- include lib/record.lua
-- include lib/take.lua
-- include lib/wake.lua
local me, now_ms, count = ARGV[2], ARGV[3], tonumber(ARGV[4])
local taken = {}

if ARGV[9] == '1' then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local record = read_record('@TASK_PREFIX@' .. id)
    if record.status == 'processing' and record.worker_id == me and record.job_id then
      taken[#taken + 1] = record_reply({record.job_id, '0'}, record)
    end
  end
end

local started, passed, left = take_jobs(
  {queue = KEYS[1], running = KEYS[2], outbox = KEYS[3], metrics = KEYS[5], name = ARGV[8]},
  me, ARGV[1], now_ms, count, tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), taken)

if started < count then
  redis.call('ZADD', KEYS[4], 'NX', tonumber(now_ms), me)
else
  redis.call('ZREM', KEYS[4], me)
  if left then wake_one(ARGV[8]) end
end
table.insert(taken, 1, (started >= count or passed > 0) and 1 or 0)
return taken
