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
-- yet) or 'throttled' (its project runs project_limit tasks) without claiming; else {score,
-- 'started', field, value, ...} with the started record, or {score, why} when the claimed job's
-- task may not run: 'gone', 'stale' (the task has a newer job) or the task's status.
-- A start makes the task's `started` webhook due when its webhook_events ask for one, and counts how
-- long the task waited in `wait_sum:`, `wait_count:` and one `wait_in:` bucket per queue and type:
-- from when it could start (its job's enqueue time in {taskd}:arq:job:{job id}, or a retry's
-- next_retry_at when later) to now.
-- include lib/emit.lua
-- include lib/webhook_event.lua
-- include lib/fair.lua
local lock = redis.call('GET', KEYS[3])
if lock and lock ~= ARGV[2] then return 'locked' end
local score = redis.call('ZSCORE', KEYS[4], ARGV[4])
if not score or tonumber(score) > tonumber(ARGV[5]) then return 'not_due' end
-- The record once: the checks, the started record (the reply, its webhook, its event) come from it.
local record = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do record[all[i]] = all[i + 1] end
local status = record.status
if status == 'queued' and record.job_id == ARGV[4] and throttled(record.project_id, tonumber(ARGV[7])) then
  return 'throttled'
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[6])
local function started()
  local reply = {score, 'started'}
  for name, value in pairs(record) do
    reply[#reply + 1] = name
    reply[#reply + 1] = value
  end
  return reply
end
if not status then return {score, 'gone'} end
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
local attempt = tostring((tonumber(record.attempt) or 0) + 1)
-- A retry could start no earlier than this (its back-off is not waiting); read before it is cleared.
local retry_ms = (tonumber(record.next_retry_at) or 0) * 1000
redis.call('HSET', KEYS[1], 'status', 'processing', 'started_at', ARGV[1], 'updated_at', ARGV[1],
           'worker_id', ARGV[2], 'progress', '0.0', 'attempt', attempt)
if record.current_step or record.next_retry_at then redis.call('HDEL', KEYS[1], 'current_step', 'next_retry_at') end
record.status, record.started_at, record.updated_at = 'processing', ARGV[1], ARGV[1]
record.worker_id, record.progress, record.attempt = ARGV[2], '0.0', attempt
record.current_step, record.next_retry_at = nil, nil
local job = redis.call('GET', '@JOB_PREFIX@' .. ARGV[4])
local enqueued_ms = job and tonumber(string.match(job, '"et":(%d+)'))
if enqueued_ms then
  local ready_ms = math.max(enqueued_ms, retry_ms)
  local waited = math.max(0, tonumber(ARGV[5]) - ready_ms) / 1000
  local series = record.queue .. ':' .. record.task_type
  redis.call('HINCRBYFLOAT', KEYS[7], 'wait_sum:' .. series, waited)
  redis.call('HINCRBY', KEYS[7], 'wait_count:' .. series, 1)
  for _, le in ipairs({@WAIT_BUCKETS@}) do
    if waited <= le then
      redis.call('HINCRBY', KEYS[7], 'wait_in:' .. series .. ':' .. le, 1)
      break
    end
  end
end
redis.call('ZADD', KEYS[2], math.floor(tonumber(ARGV[1]) * 1000), ARGV[3])
redis.call('SADD', '@PROCESSING_PREFIX@' .. record.project_id, ARGV[3])
leave_line(KEYS[1], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[8]), {record.queue, record.project_id})
if wants_webhook_record(record, 'started') then
  queue_webhook(KEYS[5], KEYS[6], ARGV[3] .. ':started', ARGV[5])
end
-- The streams' expiry stays: the queued event set it, the next event sets it again (lib/emit.lua).
emit_record(record, 'status', true)
return started()
