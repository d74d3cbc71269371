-- submit.lua: admits new tasks and stores each, all or nothing, in one round trip.
--
-- Admission (how many tasks the project has waiting, the queue's length limit), the record, its
-- project index, the counters, the job in its project's line (and on arq's queue set when it is
-- the project's head: lib/fair.lua), the workers' wake-up and the first event. How many of the
-- project's tasks run at once is not decided here: start.lua throttles, so a busy project's
-- tasks are accepted and wait.
-- With an Idempotency-Key (`idempotency` not ''), the key is checked and remembered in the same step
-- as the task is created, so of two identical requests racing exactly one creates the task: a key
-- seen before with the same fingerprint answers with what its first request made, with another
-- fingerprint it is refused; either way nothing is written. A refused submit (a full project or
-- queue) remembers nothing, so the same request may be sent again later.
-- The submits made at once in one process (its requests' calls in one turn of the event loop)
-- come in one call: each is admitted, stored and answered as it would be alone, in order, and its
-- own reply (or error) comes back; their counters, the project index's, active set's and project
-- stream's expiries and the types' past durations are written or read once for all of them
-- (lib/later.lua). The keys of each are built here from its ids (its record, its project's index,
-- active and processing sets, its queue's waiting set), in the partition of KEYS[1]: a task's id
-- names its project's partition (taskd.keys.new_task_id), and the caller sends each partition's
-- submits in a call of their own.
-- KEYS[1]  metrics        {taskd}:metrics, the shared counters
-- ARGV[1]  ttl            seconds a record, its project's index and active set are kept
-- ARGV[2]  aging_ms       execution.priority_aging in ms (where a promoted head goes: lib/fair.lua)
-- ARGV[3]  idempotency_ttl seconds an Idempotency-Key is remembered
-- ARGV[4]  scan           the most jobs a start passes over (take.lua's scan)
-- ARGV[5]  project_limit  limits.concurrent_per_project (lib/fair.lua's throttle); 0 = no limit
-- ARGV[6..] submits       the submits, one after another, each in these values (SUBMIT):
--   task_id        the task's id
--   created_ms     its creation time in ms, with a fraction (its score in the project index)
--   score          when the job is due, in ms, moved earlier by its priority (its own score)
--   job_id         the arq job's id
--   queued_limit   the most tasks a project may have waiting (queued); 0 = unlimited
--   queue_limit    the most tasks that may wait on the queue; 0 = unlimited
--   stored_limit   the most bytes the project's heavy records may hold (lib/stored.lua); 0 = unlimited
--   queue          taskd's queue name, published on {taskd}:wake
--   task_type      the task's type, for the per-type counters
--   fingerprint    a digest of the request's route and body ('' without an Idempotency-Key)
--   depends_on     the ids the task depends on, as a JSON list ('[]': none)
--   scheduled_ms   when the task may queue, in ms (`run_at`/`delay_seconds`); 0: now
--   rate_limit     submits per window allowed to the API key (with `ratelimit`)
--   rate_window    the window, in ms
--   rate_nonce     a value unique to this request (lib/window.lua)
--   fields         the record's fields as one JSON list: name, value, name, value, ... (one
--                  value, not one per name and value: packing ~30 arguments was a sizeable part
--                  of the API's CPU per submit; batch.lua's `fields` are the same)
--   elsewhere      the tasks waiting on the queue in the other partitions (redis.partitions),
--                  read just before: counted towards queue_limit; 0 with one partition
--   taker          the id of the submitting process's worker of the queue when it has a free
--                  slot held for this call ('' for none): if it waits in {taskd}:idle:{queue},
--                  this script starts the queue's next job for it (below)
--   taker_room     that worker's free slots, the held one included
--   now            now, in seconds, as stored in a started record
--   idempotency    {taskd}:idempotency:{key id}:{key hash}, the Idempotency-Key's memory; '' for none
--   ratelimit      {taskd}:ratelimit:submit:{key hash}, the API key's submit log (lib/window.lua); '' for none
--   first_retry    '1': a retry (the record's retry_of) made only if the task it retries has none yet
--                  (`taskd retry-failed`); '' for any other submit. Every retry stored names itself on
--                  the task it retries (`retried_as`), in this script, so an operator's retry sees a
--                  tenant's stored before it, however close
--   replay_only    '1': a check of the moment refused the request (taskd.submit.idempotency), so
--                  only a replay (or `first_retry`'s retried_before) may answer it: with its key not
--                  remembered, {'not_remembered'} and nothing is written; '' for any other submit
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
-- it held. The worker stays in the idle set while it has free slots left, as after a take. When the
-- new task is itself the job that take would start (lib/fair.lua's starts_straight: no job is due
-- on arq's set and its project is under its limit), it is started without going in its project's
-- line, on arq's set and in the heads first (lib/begin.lua's `outside`): the same record, events
-- and counters, a dozen writes fewer.
-- With a rate limit (`ratelimit` not ''), the submit spends one unit of the API key's quota
-- before anything else, as a separate check did before (a replay or a full project spends it too),
-- and a submit over the limit writes nothing else.
-- Returns one reply per submit, in order: {outcome, quota, handed}, or {'error', message} when its
-- submit raised an error (a full Redis refuses its first write: nothing of it is written). quota
-- is lib/window.lua's {allowed, remaining, retry-after ms, reset ms}, or {} without a rate limit.
-- The outcome is {'rate_limited'} when refused by it; else
-- {'ok', position, duration_sum, duration_count}: the task's 1-based queue position
-- (lib/fair.lua's place) and the type's past durations (sum and count, as stored); or
-- {'project_full', waiting tasks} or {'queue_full', waiting tasks}, or {'stored_full', the bytes
-- the project's heavy records hold, this one's, the seconds until enough of them are gone for it
-- (0: never, it alone is over the limit)}, or {'bad_dependency', id, why}
-- (why: 'unknown', 'project', 'failed' or 'cancelled'), and then nothing is written; or
-- {'replayed', position, duration_sum, duration_count, task_id, created_ms}, what the key's first
-- request got, or {'idempotency_key_reused'}, or {'not_remembered'} (`replay_only`), or
-- {'retried_before', the retry's id} (`first_retry`),
-- and then nothing is written either. A task waiting
-- for its dependencies or its time has position 0. `handed` is {} when no start was made for
-- `taker`, else take.lua's reply for it: {look, entry}, or {look} when it started nothing.
-- include lib/admit.lua
-- include lib/window.lua
-- include lib/take.lua
-- include lib/later.lua
local SUBMIT = {'task_id', 'created_ms', 'score', 'job_id', 'queued_limit', 'queue_limit', 'stored_limit', 'queue',
  'task_type',
  'fingerprint', 'depends_on', 'scheduled_ms', 'rate_limit', 'rate_window', 'rate_nonce', 'fields', 'elsewhere',
  'taker', 'taker_room', 'now', 'idempotency', 'ratelimit', 'first_retry', 'replay_only'}
local ttl, aging_ms, idempotency_ttl, scan, project_limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]),
  tonumber(ARGV[5])
local later = later_writes(KEYS[1])
-- The types' past durations, read once a type (lib/admit.lua's durations).
local durations_read = {}

local function submit(a)
  local quota = {}
  if a.ratelimit ~= '' then
    -- Not trimmed first: the ZADD is the first write, so a full Redis refuses the submit (lib/window.lua).
    quota = spend(a.ratelimit, tonumber(a.rate_limit), tonumber(a.rate_window), a.rate_nonce, 1, false)
    if quota[1] == 0 then return {{'rate_limited'}, quota, {}} end
  end
  local remembered = a.idempotency ~= ''
  if remembered then
    local first = redis.call('HMGET', a.idempotency, 'fingerprint', 'position', 'duration_sum', 'duration_count',
      'task_id', 'created_ms')
    if first[1] then
      if first[1] ~= a.fingerprint then return {{'idempotency_key_reused'}, quota, {}} end
      return {{'replayed', first[2], first[3], first[4], first[5], first[6]}, quota, {}}
    end
  end
  local fields = cjson.decode(a.fields)
  local named = by_name(fields)
  local project = named.project_id
  -- A retry's original is of the same project, so in this partition.
  local original = named.retry_of and '@TASK_PREFIX@' .. named.retry_of or nil
  if original and a.first_retry == '1' then
    local earlier = redis.call('HGET', original, 'retried_as')
    if earlier then return {{'retried_before', earlier}, quota, {}} end
  end
  -- After the retry it has: a task retried already is named with its retry (`taskd retry-failed`),
  -- whatever a check of the moment now thinks of it.
  if remembered and a.replay_only == '1' then return {{'not_remembered'}, quota, {}} end
  local waiting_for, bad, why = unmet(project, cjson.decode(a.depends_on), {})
  if not waiting_for then return {{'bad_dependency', bad, why}, quota, {}} end
  local queued_limit, queue_limit = tonumber(a.queued_limit), tonumber(a.queue_limit)
  local active_key = '@ACTIVE_PREFIX@' .. project
  if queued_limit > 0 then
    local waiting = queued(project, queued_limit)
    if waiting >= queued_limit then return {{'project_full', waiting}, quota, {}} end
  end
  local queue, taker = a.queue, a.taker
  if queue_limit > 0 then
    local waiting = redis.call('ZCARD', '@WAITING_PREFIX@' .. queue) + tonumber(a.elsewhere)
    if waiting >= queue_limit then return {{'queue_full', waiting}, quota, {}} end
  end
  local stored = nil
  if heavy(named, ttl) then
    stored = weight(named)
    local budget = tonumber(a.stored_limit)
    if budget > 0 then
      local now_s = tonumber(a.created_ms) / 1000
      local total, live = stored_total(project, now_s)
      if total + stored > budget then
        return {{'stored_full', total, stored, stored_wait(total, live, stored, budget, now_s) or 0}, quota, {}}
      end
    end
  end
  local idle = '@IDLE_PREFIX@' .. queue
  local direct = taker ~= '' and #waiting_for == 0 and tonumber(a.scheduled_ms) == 0
    and redis.call('ZSCORE', idle, taker) ~= false
  local now, now_ms = a.now, nil
  local straight = false
  if direct then
    now_ms = tostring(math.floor(tonumber(now) * 1000))
    straight = starts_straight(queue, project, now_ms, project_limit,
      pending(later, 'SADD', '@PROCESSING_PREFIX@' .. project))
  end
  local task_key = '@TASK_PREFIX@' .. a.task_id
  local position, record = store({key = task_key, id = a.task_id, project = project,
    project_key = '@PROJECT_PREFIX@' .. project, active_key = active_key, created_ms = a.created_ms, ttl = ttl,
    fields = fields, waiting_for = waiting_for, job_id = a.job_id, score = a.score, aging_ms = aging_ms,
    queue = queue, task_type = a.task_type, scheduled_ms = a.scheduled_ms, unwoken = direct, straight = straight,
    stored = stored},
    later)
  if original and redis.call('EXISTS', original) == 1 then
    redis.call('HSET', original, 'retried_as', a.task_id)
  end
  local handed = {}
  if direct then
    local started, passed, left = 1, 0, false
    if straight then
      -- The task is the job a take would start next: it starts here as the take would start it,
      -- with the score arq's set would have given it (lib/fair.lua's seat), never having waited.
      begin(task_key, a.task_id, a.job_id, record, taker, now, now_ms, tonumber(aging_ms),
        {running = '@RUNNING_PREFIX@' .. queue, metrics = KEYS[1], outbox = '@OUTBOX@',
         started_state = '@WEBHOOK_PREFIX@' .. a.task_id .. ':started'}, false, later, nil, true)
      local score = turn_score(tonumber(a.score), tonumber(a.created_ms), record.priority, tonumber(aging_ms))
      handed[1] = record_reply({a.job_id, string.format('%.17g', score)}, record)
    else
      started, passed, left = take_jobs(
        {queue = '@QUEUE_PREFIX@' .. queue, running = '@RUNNING_PREFIX@' .. queue, outbox = '@OUTBOX@',
         metrics = KEYS[1], name = queue},
        taker, now, now_ms, 1, scan, project_limit, tonumber(aging_ms), handed)
    end
    -- What take.lua does with its worker after a take of its free slots.
    local room = tonumber(a.taker_room)
    if started >= room then redis.call('ZREM', idle, taker) end
    if left then wake_one(queue) end
    table.insert(handed, 1, (started >= room or passed > 0) and 1 or 0)
  end
  local past = durations(KEYS[1], a.task_type, durations_read)
  local reply = {'ok', position, past[1] or '0', past[2] or '0'}
  if remembered then
    redis.call('HSET', a.idempotency, 'fingerprint', a.fingerprint, 'position', reply[2], 'duration_sum', reply[3],
      'duration_count', reply[4], 'task_id', a.task_id, 'created_ms', a.created_ms)
    redis.call('EXPIRE', a.idempotency, idempotency_ttl)
  end
  return {reply, quota, handed}
end

local replies = {}
local at = 6
while at <= #ARGV do
  local a = {}
  for i, name in ipairs(SUBMIT) do a[name] = ARGV[at + i - 1] end
  local ok, reply = pcall(submit, a)
  if not ok then
    -- A command's error comes as a table with its message in `err`.
    reply = {'error', type(reply) == 'table' and reply.err or tostring(reply)}
  end
  replies[#replies + 1] = reply
  at = at + #SUBMIT
end
write_later(later)
return replies
