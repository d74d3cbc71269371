-- submit.lua: admits a new task and stores it, all or nothing, in one round trip.
--
-- Admission (the project's concurrency limit, the queue's length limit), the record, its project
-- index, the counters, the queued arq job, the workers' wake-up and the first event.
-- KEYS[1]  task           taskd:task:{id}, the record hash to write
-- KEYS[2]  project        taskd:project:{project_id}, the project's index (id -> created ms)
-- KEYS[3]  metrics        taskd:metrics, the shared counters
-- KEYS[4]  queue          taskd:queue:{queue}, arq's sorted set of the task's queue
-- KEYS[5]  job            arq:job:{job id}, the arq job to create
-- KEYS[6]  active         taskd:project_active:{project_id}, the project's queued and processing ids
-- KEYS[7]  running        taskd:running:{queue}, the queue's processing tasks
-- ARGV[1]  task_id        the task's id
-- ARGV[2]  created_ms     its creation time in ms (its score in the project index)
-- ARGV[3]  ttl            seconds the record, the index and the active set are kept
-- ARGV[4]  score          when the job is due, in ms (arq's queue score)
-- ARGV[5]  job_id         the arq job's id
-- ARGV[6]  job            the arq job's serialised form
-- ARGV[7]  job_expiry_ms  milliseconds the job definition is kept
-- ARGV[8]  project_limit  the most queued or processing tasks a project may have; 0 = unlimited
-- ARGV[9]  queue_limit    the most tasks that may wait on the queue; 0 = unlimited
-- ARGV[10] queue          taskd's queue name, published on taskd:wake
-- ARGV[11] task_type      the task's type, for the per-type counters
-- ARGV[12..] fields       the record's fields: name, value, name, value, ...
-- Returns {'ok', rank, running, duration_sum, duration_count}: the job's rank in the queue (-1 if
-- absent), the queue's processing count and the type's past durations (sum and count, as stored);
-- or {'project_full', active tasks} or {'queue_full', waiting tasks}, and then nothing is written.
-- include lib/emit.lua
local project_limit, queue_limit = tonumber(ARGV[8]), tonumber(ARGV[9])
if project_limit > 0 and redis.call('SCARD', KEYS[6]) >= project_limit then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[6])) do
    local status = redis.call('HGET', '@TASK_PREFIX@' .. id, 'status')
    if status ~= 'queued' and status ~= 'processing' then redis.call('SREM', KEYS[6], id) end
  end
  local active = redis.call('SCARD', KEYS[6])
  if active >= project_limit then return {'project_full', active} end
end
if queue_limit > 0 then
  local waiting = redis.call('ZCARD', KEYS[4]) - redis.call('ZCARD', KEYS[7])
  if waiting >= queue_limit then return {'queue_full', waiting} end
end
for i = 12, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('EXPIRE', KEYS[6], ARGV[3])
redis.call('HINCRBY', KEYS[3], 'total_tasks', 1)
redis.call('HINCRBY', KEYS[3], 'submitted:' .. ARGV[11], 1)
redis.call('SET', KEYS[5], ARGV[6], 'PX', ARGV[7])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
redis.call('PUBLISH', '@WAKE@', ARGV[10])
emit(KEYS[1], 'status')
local durations = redis.call('HMGET', KEYS[3], 'duration_sum:' .. ARGV[11], 'duration_count:' .. ARGV[11])
return {'ok', redis.call('ZRANK', KEYS[4], ARGV[5]) or -1, redis.call('ZCARD', KEYS[7]),
        durations[1] or '0', durations[2] or '0'}
