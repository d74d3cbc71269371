-- submit.lua: admits a new task and stores it, all or nothing, in one round trip.
--
-- Admission (how many tasks the project has waiting, the queue's length limit), the record, its
-- project index, the counters, the job in its project's line (and on arq's queue set when it is
-- the project's head: lib/fair.lua), the workers' wake-up and the first event. How many of the
-- project's tasks run at once is not decided here: start.lua throttles, so a busy project's
-- tasks are accepted and wait.
-- With an Idempotency-Key (KEYS[8] not ''), the key is checked and remembered in the same step
-- as the task is created, so of two identical requests racing exactly one creates the task: a key
-- seen before with the same fingerprint answers with what its first request made, with another
-- fingerprint it is refused; either way nothing is written. A refused submit (a full project or
-- queue) remembers nothing, so the same request may be sent again later.
-- KEYS[1]  task           taskd:task:{id}, the record hash to write
-- KEYS[2]  project        taskd:project:{project_id}, the project's index (id -> created ms)
-- KEYS[3]  metrics        taskd:metrics, the shared counters
-- KEYS[4]  waiting        taskd:waiting:{queue}, every waiting job of the task's queue
-- KEYS[5]  job            arq:job:{job id}, the arq job to create
-- KEYS[6]  active         taskd:project_active:{project_id}, the project's queued and processing ids
-- KEYS[7]  processing     taskd:project_processing:{project_id}, the project's processing ids
-- KEYS[8]  idempotency    taskd:idempotency:{key id}:{key hash}, the Idempotency-Key's memory; '' for none
-- KEYS[9]  scheduled      taskd:scheduled, the tasks waiting for their time (task id -> due ms)
-- ARGV[1]  task_id        the task's id
-- ARGV[2]  created_ms     its creation time in ms (its score in the project index)
-- ARGV[3]  ttl            seconds the record, the index and the active set are kept
-- ARGV[4]  score          when the job is due, in ms, moved earlier by its priority (its own score)
-- ARGV[5]  job_id         the arq job's id
-- ARGV[6]  job            the arq job's serialised form
-- ARGV[7]  job_expiry_ms  milliseconds the job definition is kept
-- ARGV[8]  queued_limit   the most tasks a project may have waiting (queued); 0 = unlimited
-- ARGV[9]  queue_limit    the most tasks that may wait on the queue; 0 = unlimited
-- ARGV[10] queue          taskd's queue name, published on taskd:wake
-- ARGV[11] task_type      the task's type, for the per-type counters
-- ARGV[12] aging_ms       execution.priority_aging in ms (where a promoted head goes: lib/fair.lua)
-- ARGV[13] fingerprint    a digest of the request's route and body ('' without an Idempotency-Key)
-- ARGV[14] idempotency_ttl seconds the Idempotency-Key is remembered
-- ARGV[15] depends_on     the ids the task depends on, as a JSON list ('[]': none)
-- ARGV[16] scheduled_ms   when the task may queue, in ms (`run_at`/`delay_seconds`); 0: now
-- ARGV[17..] fields       the record's fields: name, value, name, value, ...
-- A task with dependencies not yet completed is stored queued with `waiting_for` (a JSON list of
-- them) and no job (its `job_id` left out, `enqueues` 0), and added to each one's
-- taskd:dependents:{id}; lib/ended.lua queues it when the last one completes.
-- A task scheduled for later is stored the same way, queued with `scheduled_for` and no job, and
-- added to taskd:scheduled, its record (and the project's index and active set) kept until `ttl`
-- past its time; due.lua queues it when its time comes. Until then it is in no line,
-- so it holds up no other task of its project and counts in no queue position.
-- The lines and heads it writes through lib/fair.lua are taskd:project_waiting:{queue}:{project_id},
-- taskd:heads:{queue} and arq's taskd:queue:{queue}.
-- Returns {'ok', position, duration_sum, duration_count}: the task's 1-based queue position
-- (lib/fair.lua's place) and the type's past durations (sum and count, as stored); or
-- {'project_full', waiting tasks} or {'queue_full', waiting tasks}, or {'bad_dependency', id, why}
-- (why: 'unknown', 'project', 'failed' or 'cancelled'), and then nothing is written; or
-- {'replayed', position, duration_sum, duration_count, task_id, created_ms}, what the key's first
-- request got, or {'idempotency_key_reused'}, and then nothing is written either. A task waiting
-- for its dependencies or its time has position 0.
-- include lib/emit.lua
-- include lib/fair.lua
local remembered = KEYS[8] ~= ''
if remembered then
  local first = redis.call('HMGET', KEYS[8], 'fingerprint', 'position', 'duration_sum', 'duration_count',
    'task_id', 'created_ms')
  if first[1] then
    if first[1] ~= ARGV[13] then return {'idempotency_key_reused'} end
    return {'replayed', first[2], first[3], first[4], first[5], first[6]}
  end
end
local project = nil
for i = 17, #ARGV, 2 do
  if ARGV[i] == 'project_id' then project = ARGV[i + 1] end
end
local waiting_for = {}
for _, id in ipairs(cjson.decode(ARGV[15])) do
  local dependency = redis.call('HMGET', '@TASK_PREFIX@' .. id, 'status', 'project_id')
  if not dependency[1] then return {'bad_dependency', id, 'unknown'} end
  if dependency[2] ~= project then return {'bad_dependency', id, 'project'} end
  if dependency[1] == 'failed' or dependency[1] == 'cancelled' then
    return {'bad_dependency', id, dependency[1]}
  end
  if dependency[1] ~= 'completed' then table.insert(waiting_for, id) end
end
local queued_limit, queue_limit = tonumber(ARGV[8]), tonumber(ARGV[9])
if queued_limit > 0 and redis.call('SCARD', KEYS[6]) - redis.call('SCARD', KEYS[7]) >= queued_limit then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[6])) do
    local status = redis.call('HGET', '@TASK_PREFIX@' .. id, 'status')
    if status ~= 'queued' and status ~= 'processing' then redis.call('SREM', KEYS[6], id) end
  end
  local queued = redis.call('SCARD', KEYS[6]) - redis.call('SCARD', KEYS[7])
  if queued >= queued_limit then return {'project_full', queued} end
end
if queue_limit > 0 then
  local waiting = redis.call('ZCARD', KEYS[4])
  if waiting >= queue_limit then return {'queue_full', waiting} end
end
for i = 17, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('EXPIRE', KEYS[6], ARGV[3])
redis.call('HINCRBY', KEYS[3], 'total_tasks', 1)
redis.call('HINCRBY', KEYS[3], 'submitted:' .. ARGV[11], 1)
local position = 0
local scheduled = tonumber(ARGV[16]) > 0
if #waiting_for > 0 or scheduled then
  redis.call('HDEL', KEYS[1], 'job_id')
  redis.call('HSET', KEYS[1], 'enqueues', 0)
  if #waiting_for > 0 then
    redis.call('HSET', KEYS[1], 'waiting_for', cjson.encode(waiting_for))
    for _, id in ipairs(waiting_for) do
      redis.call('SADD', '@DEPENDENTS_PREFIX@' .. id, ARGV[1])
      redis.call('EXPIRE', '@DEPENDENTS_PREFIX@' .. id, ARGV[3])
    end
  end
  if scheduled then
    redis.call('ZADD', KEYS[9], ARGV[16], ARGV[1])
    -- Kept while it waits for its time (up to limits.max_schedule_ahead) and `ttl` after, as a
    -- task queued then would be; so is its place in its project's index and active set.
    local kept = tonumber(ARGV[3]) + math.ceil((tonumber(ARGV[16]) - tonumber(ARGV[2])) / 1000)
    for _, key in ipairs({KEYS[1], KEYS[2], KEYS[6]}) do
      if redis.call('TTL', key) < kept then redis.call('EXPIRE', key, kept) end
    end
  end
else
  redis.call('SET', KEYS[5], ARGV[6], 'PX', ARGV[7])
  wait_in_line(KEYS[1], ARGV[5], tonumber(ARGV[4]), tonumber(ARGV[2]), tonumber(ARGV[12]))
  redis.call('PUBLISH', '@WAKE@', ARGV[10])
  position = place(ARGV[10], project, ARGV[5])
end
emit(KEYS[1], 'status')
local durations = redis.call('HMGET', KEYS[3], 'duration_sum:' .. ARGV[11], 'duration_count:' .. ARGV[11])
local reply = {'ok', position, durations[1] or '0', durations[2] or '0'}
if remembered then
  redis.call('HSET', KEYS[8], 'fingerprint', ARGV[13], 'position', reply[2], 'duration_sum', reply[3],
    'duration_count', reply[4], 'task_id', ARGV[1], 'created_ms', ARGV[2])
  redis.call('EXPIRE', KEYS[8], ARGV[14])
end
return reply
