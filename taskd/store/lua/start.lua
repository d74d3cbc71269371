-- start.lua: claims an arq job for a worker and starts its task, in one round trip.
--
-- The claim follows arq's rule (the job is unlocked or locked by this worker, still queued and
-- due). A processing task is never started again here, whatever arq thinks: only the reclaimer
-- (which knows its worker is dead) puts it back on a queue, under a new job id. The same worker
-- asking again for the same job gets the same answer: its first call went through but the reply
-- was lost. A task whose project already runs `project_limit` tasks is not claimed (no lock
-- taken): it stays its project's head on the queue, and the worker goes on to other projects'
-- heads. A started task leaves its project's line and the next one becomes the head (lib/fair.lua).
-- KEYS[1]  task           {taskd}:task:{id}, the record hash
-- KEYS[2]  running        {taskd}:running:{queue}, the queue's processing tasks (id -> started ms)
-- KEYS[3]  lock           {taskd}:arq:in-progress:{job id}, arq's lock of the job
-- KEYS[4]  queue          {taskd}:queue:{queue}, arq's sorted set of the queue
-- KEYS[5]  outbox         {taskd}:webhooks:due, the webhook outbox
-- KEYS[6]  started_state  {taskd}:webhook:{id}:started, the delivery state of its `started` webhook
-- KEYS[7]  metrics        {taskd}:metrics, the shared counters (the wait-time histogram)
-- ARGV[1]  now            now, in seconds (as stored in the record)
-- ARGV[2]  worker_id      the claiming worker's id (the lock's value)
-- ARGV[3]  task_id        the task's id
-- ARGV[4]  job_id         the arq job's id
-- ARGV[5]  now_ms         now, in ms (compared with the job's score)
-- ARGV[6]  lock_ms        milliseconds the lock is held
-- ARGV[7]  project_limit  limits.concurrent_per_project: the most processing tasks of a project; 0 = no limit
-- ARGV[8]  aging_ms       execution.priority_aging in ms (where the next head goes: lib/fair.lua)
-- Through lib/fair.lua it reads and writes {taskd}:project_processing:{project_id},
-- {taskd}:project_waiting:{queue}:{project_id}, {taskd}:waiting:{queue} and {taskd}:heads:{queue}.
-- Returns 'locked' (another worker holds the job), 'not_due' (gone from the queue or not due
-- yet) or 'throttled' (its project runs project_limit tasks; the head goes behind the heads waiting,
-- lib/fair.lua's pass_turn) without claiming; else {score,
-- 'started', field, value, ...} with the started record, or {score, why} when the claimed job's
-- task may not run: 'gone', 'stale' (the task has a newer job) or the task's status.
-- A start is lib/begin.lua's: the record, the wait-time histogram, the running and processing sets,
-- the next head of the project's line, the `started` webhook and the event. When that next head
-- went on arq's set, one worker is woken for it (lib/wake.lua: {taskd}:idle:{queue}, the
-- worker's heartbeat and channel, or {taskd}:wake).
-- include lib/emit.lua
-- include lib/fair.lua
-- include lib/begin.lua
-- include lib/later.lua
-- include lib/record.lua
-- include lib/wake.lua
local lock = redis.call('GET', KEYS[3])
if lock and lock ~= ARGV[2] then return 'locked' end
local score = redis.call('ZSCORE', KEYS[4], ARGV[4])
if not score or tonumber(score) > tonumber(ARGV[5]) then return 'not_due' end
-- The record once: the checks, the started record (the reply, its webhook, its event) come from it.
local record = read_record(KEYS[1])
local status = record.status
if status == 'queued' and record.job_id == ARGV[4] and throttled(record.project_id, tonumber(ARGV[7])) then
  pass_turn(KEYS[4], ARGV[4], score, record.priority, tonumber(ARGV[5]), tonumber(ARGV[8]))
  return 'throttled'
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[6])
local function started() return record_reply({score, 'started'}, record) end
if not status then
  -- Its record is gone (expired while it waited): its project's next job takes the turn, and a
  -- worker is woken for it. The queue's name is what follows the prefix of arq's set.
  local queue = string.sub(KEYS[4], #'@QUEUE_PREFIX@' + 1)
  if orphan_leaves(queue, ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[8])) then wake_one(queue) end
  return {score, 'gone'}
end
-- A job that will not run (the worker drops it) gives its project's turn to the next job in line.
if record.job_id ~= ARGV[4] then
  leave_line(KEYS[1], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[8]))
  return {score, 'stale'}
end
-- The same worker asking again for the same job: its first call went through but the reply was lost.
if status == 'processing' and record.worker_id == ARGV[2] then return started() end
if status ~= 'queued' then
  leave_line(KEYS[1], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[8]))
  return {score, status}
end
local written = {running = KEYS[2], metrics = KEYS[7], outbox = KEYS[5], started_state = KEYS[6]}
local later = later_writes(written.metrics)
local seated = begin(KEYS[1], ARGV[3], ARGV[4], record, ARGV[2], ARGV[1], ARGV[5], tonumber(ARGV[8]), written,
  true, later)
write_later(later)
-- The project's next job is on arq's set now: a worker is woken for it (a submit behind its head
-- woke none, lib/admit.lua). take.lua needs none: it reads the set again after each start.
if seated then wake_one(record.queue) end
return started()
