-- submit.lua: admits a new task and stores it, all or nothing, in one round trip.
--
-- Admission (how many tasks the project has waiting, the queue's length limit), the record, its
-- project index, the counters, the job in its project's line (and on arq's queue set when it is
-- the project's head: lib/fair.lua), the workers' wake-up and the first event. How many of the
-- project's tasks run at once is not decided here: start.lua throttles, so a busy project's
-- tasks are accepted and wait.
-- With an Idempotency-Key (KEYS[7] not {taskd}:none), the key is checked and remembered in the same step
-- as the task is created, so of two identical requests racing exactly one creates the task: a key
-- seen before with the same fingerprint answers with what its first request made, with another
-- fingerprint it is refused; either way nothing is written. A refused submit (a full project or
-- queue) remembers nothing, so the same request may be sent again later.
-- KEYS[1]  task           {taskd}:task:{id}, the record hash to write
-- KEYS[2]  project        {taskd}:project:{project_id}, the project's index (id -> created ms)
-- KEYS[3]  metrics        {taskd}:metrics, the shared counters
-- KEYS[4]  waiting        {taskd}:waiting:{queue}, every waiting job of the task's queue
-- KEYS[5]  active         {taskd}:project_active:{project_id}, the project's queued and processing ids
-- KEYS[6]  processing     {taskd}:project_processing:{project_id}, the project's processing ids
-- KEYS[7]  idempotency    {taskd}:idempotency:{key id}:{key hash}, the Idempotency-Key's memory; {taskd}:none for none
-- KEYS[8]  ratelimit      {taskd}:ratelimit:submit:{key hash}, the API key's submit log (lib/window.lua); {taskd}:none for none
-- ARGV[1]  task_id        the task's id
-- ARGV[2]  created_ms     its creation time in ms, with a fraction (its score in the project index)
-- ARGV[3]  ttl            seconds the record, the index and the active set are kept
-- ARGV[4]  score          when the job is due, in ms, moved earlier by its priority (its own score)
-- ARGV[5]  job_id         the arq job's id
-- ARGV[6]  queued_limit   the most tasks a project may have waiting (queued); 0 = unlimited
-- ARGV[7]  queue_limit    the most tasks that may wait on the queue; 0 = unlimited
-- ARGV[8]  queue          taskd's queue name, published on {taskd}:wake
-- ARGV[9]  task_type      the task's type, for the per-type counters
-- ARGV[10] aging_ms       execution.priority_aging in ms (where a promoted head goes: lib/fair.lua)
-- ARGV[11] fingerprint    a digest of the request's route and body ('' without an Idempotency-Key)
-- ARGV[12] idempotency_ttl seconds the Idempotency-Key is remembered
-- ARGV[13] depends_on     the ids the task depends on, as a JSON list ('[]': none)
-- ARGV[14] scheduled_ms   when the task may queue, in ms (`run_at`/`delay_seconds`); 0: now
-- ARGV[15] rate_limit     submits per window allowed to the API key (with KEYS[8])
-- ARGV[16] rate_window    the window, in ms
-- ARGV[17] rate_nonce     a value unique to this request (lib/window.lua)
-- ARGV[18] fields         the record's fields as one JSON list: name, value, name, value, ... (one
--                         argument, not one per name and value: packing ~30 arguments was a
--                         sizeable part of the API's CPU per submit; batch.lua's `fields` are the same)
-- ARGV[19] elsewhere      the tasks waiting on the queue in the other partitions (redis.partitions),
--                         read just before: counted towards queue_limit; 0 with one partition
-- ARGV[20] taker          the id of the submitting process's worker of the queue when it has a free
--                         slot held for this call ('' for none): if it waits in {taskd}:idle:{queue},
--                         this script starts the queue's next job for it (below)
-- ARGV[21] taker_room     that worker's free slots, the held one included
-- ARGV[22] now            now, in seconds, as stored in a started record
-- ARGV[23] scan           the most jobs that start passes over (take.lua's scan)
-- ARGV[24] project_limit  limits.concurrent_per_project (lib/fair.lua's throttle); 0 = no limit
-- The checks and the writes are lib/admit.lua's, which batch.lua shares: a task with dependencies
-- not yet completed waits for them with no job; a task scheduled for later waits on
-- {taskd}:scheduled with no job, in no line, until due.lua queues it.
-- The lines and heads it writes through lib/fair.lua are {taskd}:project_waiting:{queue}:{project_id},
-- {taskd}:heads:{queue} and arq's {taskd}:queue:{queue}.
-- A start for an idle worker of the submitting process (`taker`): a worker in the idle set found
-- nothing to take at its last look and has not been woken since, so the job just queued is (but for
-- a throttled project) the one its next take would start. Instead of waking a worker, whose take
-- would be one more round trip before the task starts, this script starts the next job for `taker`
-- as take.lua would (lib/take.lua, one job) and returns its record; the process runs it in the slot
-- it held. The worker stays in the idle set while it has free slots left, as after a take.
-- With a rate limit (KEYS[8] not {taskd}:none), the submit spends one unit of the API key's quota
-- before anything else, as a separate check did before (a replay or a full project spends it too),
-- and a submit over the limit writes nothing else.
-- Returns {outcome, quota, handed}: quota is lib/window.lua's {allowed, remaining, retry-after ms, reset
-- ms}, or {} without a rate limit. The outcome is {'rate_limited'} when refused by it; else
-- {'ok', position, duration_sum, duration_count}: the task's 1-based queue position
-- (lib/fair.lua's place) and the type's past durations (sum and count, as stored); or
-- {'project_full', waiting tasks} or {'queue_full', waiting tasks}, or {'bad_dependency', id, why}
-- (why: 'unknown', 'project', 'failed' or 'cancelled'), and then nothing is written; or
-- {'replayed', position, duration_sum, duration_count, task_id, created_ms}, what the key's first
-- request got, or {'idempotency_key_reused'}, and then nothing is written either. A task waiting
-- for its dependencies or its time has position 0. `handed` is {} when no start was made for
-- `taker`, else take.lua's reply for it: {look, entry}, or {look} when it started nothing.
-- include lib/admit.lua
-- include lib/window.lua
-- include lib/take.lua
local quota = {}
if KEYS[8] ~= '@NO_KEY@' then
  -- Not trimmed first: the ZADD is the first write, so a full Redis refuses the submit (lib/window.lua).
  quota = spend(KEYS[8], tonumber(ARGV[15]), tonumber(ARGV[16]), ARGV[17], 1, false)
  if quota[1] == 0 then return {{'rate_limited'}, quota, {}} end
end
local remembered = KEYS[7] ~= '@NO_KEY@'
if remembered then
  local first = redis.call('HMGET', KEYS[7], 'fingerprint', 'position', 'duration_sum', 'duration_count',
    'task_id', 'created_ms')
  if first[1] then
    if first[1] ~= ARGV[11] then return {{'idempotency_key_reused'}, quota, {}} end
    return {{'replayed', first[2], first[3], first[4], first[5], first[6]}, quota, {}}
  end
end
local project = nil
local fields = cjson.decode(ARGV[18])
for i = 1, #fields, 2 do
  if fields[i] == 'project_id' then project = fields[i + 1] end
end
local waiting_for, bad, why = unmet(project, cjson.decode(ARGV[13]), {})
if not waiting_for then return {{'bad_dependency', bad, why}, quota, {}} end
local queued_limit, queue_limit = tonumber(ARGV[6]), tonumber(ARGV[7])
if queued_limit > 0 then
  local waiting = queued(KEYS[5], KEYS[6], queued_limit)
  if waiting >= queued_limit then return {{'project_full', waiting}, quota, {}} end
end
if queue_limit > 0 then
  local waiting = redis.call('ZCARD', KEYS[4]) + tonumber(ARGV[19])
  if waiting >= queue_limit then return {{'queue_full', waiting}, quota, {}} end
end
local queue, taker = ARGV[8], ARGV[20]
local idle = '@IDLE_PREFIX@' .. queue
local direct = taker ~= '' and #waiting_for == 0 and tonumber(ARGV[14]) == 0
  and redis.call('ZSCORE', idle, taker) ~= false
local position = store({key = KEYS[1], id = ARGV[1], project = project, project_key = KEYS[2],
  active_key = KEYS[5], created_ms = ARGV[2], ttl = ARGV[3],
  fields = fields, waiting_for = waiting_for, job_id = ARGV[5], score = ARGV[4], aging_ms = ARGV[10],
  queue = ARGV[8], task_type = ARGV[9], metrics_key = KEYS[3], scheduled_ms = ARGV[14], unwoken = direct})
local handed = {}
if direct then
  local now = ARGV[22]
  local started, passed, left = take_jobs(
    {queue = '@QUEUE_PREFIX@' .. queue, running = '@RUNNING_PREFIX@' .. queue, outbox = '@OUTBOX@',
     metrics = KEYS[3], name = queue},
    taker, now, tostring(math.floor(tonumber(now) * 1000)), 1, tonumber(ARGV[23]), tonumber(ARGV[24]),
    tonumber(ARGV[10]), handed)
  -- What take.lua does with its worker after a take of its free slots.
  local room = tonumber(ARGV[21])
  if started >= room then redis.call('ZREM', idle, taker) end
  if left then wake_one(queue) end
  table.insert(handed, 1, (started >= room or passed > 0) and 1 or 0)
end
local durations = redis.call('HMGET', KEYS[3], 'duration_sum:' .. ARGV[9], 'duration_count:' .. ARGV[9])
local reply = {'ok', position, durations[1] or '0', durations[2] or '0'}
if remembered then
  redis.call('HSET', KEYS[7], 'fingerprint', ARGV[11], 'position', reply[2], 'duration_sum', reply[3],
    'duration_count', reply[4], 'task_id', ARGV[1], 'created_ms', ARGV[2])
  redis.call('EXPIRE', KEYS[7], ARGV[12])
end
return {reply, quota, handed}
