-- start.lua: claims an arq job for a worker and starts its task, in one round trip.
--
-- The claim follows arq's rule (the job is unlocked or locked by this worker, still queued and
-- due). A processing task is never started again here, whatever arq thinks: only the reclaimer
-- (which knows its worker is dead) puts it back on a queue, under a new job id. The same worker
-- asking again for the same job gets the same answer: its first call went through but the reply
-- was lost.
-- KEYS[1]  task       taskd:task:{id}, the record hash
-- KEYS[2]  running    taskd:running:{queue}, the queue's processing tasks (id -> started ms)
-- KEYS[3]  lock       arq:in-progress:{job id}, arq's lock of the job
-- KEYS[4]  queue      taskd:queue:{queue}, arq's sorted set of the queue
-- ARGV[1]  now        now, in seconds (as stored in the record)
-- ARGV[2]  worker_id  the claiming worker's id (the lock's value)
-- ARGV[3]  task_id    the task's id
-- ARGV[4]  job_id     the arq job's id
-- ARGV[5]  now_ms     now, in ms (compared with the job's score)
-- ARGV[6]  lock_ms    milliseconds the lock is held
-- Returns 'locked' (another worker holds the job) or 'not_due' (gone from the queue or not due
-- yet) without claiming; else {score, 'started', field, value, ...} with the started record, or
-- {score, why} when the claimed job's task may not run: 'gone', 'stale' (the task has a newer
-- job) or the task's status.
-- include lib/emit.lua
local lock = redis.call('GET', KEYS[3])
if lock and lock ~= ARGV[2] then return 'locked' end
local score = redis.call('ZSCORE', KEYS[4], ARGV[4])
if not score or tonumber(score) > tonumber(ARGV[5]) then return 'not_due' end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[6])
local function started()
  local reply = {score, 'started'}
  for _, value in ipairs(redis.call('HGETALL', KEYS[1])) do reply[#reply + 1] = value end
  return reply
end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {score, 'gone'} end
if redis.call('HGET', KEYS[1], 'job_id') ~= ARGV[4] then return {score, 'stale'} end
-- The same worker asking again for the same job: its first call went through but the reply was lost.
if status == 'processing' and redis.call('HGET', KEYS[1], 'worker_id') == ARGV[2] then return started() end
if status ~= 'queued' then return {score, status} end
redis.call('HSET', KEYS[1], 'status', 'processing', 'started_at', ARGV[1], 'updated_at', ARGV[1],
           'worker_id', ARGV[2], 'progress', '0.0')
redis.call('HDEL', KEYS[1], 'current_step', 'next_retry_at')
redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('ZADD', KEYS[2], math.floor(tonumber(ARGV[1]) * 1000), ARGV[3])
emit(KEYS[1], 'status')
return started()
