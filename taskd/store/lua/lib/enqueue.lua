-- lib/enqueue.lua: enqueue(task_key, task_id, queue, score, now_ms, aging_ms), a fresh arq job for a task.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the keys and values it works on.
-- KEYS: none
-- ARGV: none
--   task_key  the task's record hash ({taskd}:task:{id})
--   task_id   the task's id
--   queue     taskd's queue name; the job goes on arq's sorted set {taskd}:queue:{queue}
--   score     when the job is due, in ms (arq's queue score)
--   now_ms    now, in ms: the job's enqueue time
--   aging_ms  execution.priority_aging in ms (lib/fair.lua)
--
-- A new job id per enqueue ({task id}.{n}, n counting the task's enqueues), so a stale job of an
-- earlier attempt (still in arq's hands) can never run the task again. The record keeps the job's
-- id and its enqueue time (`enqueued_ms`, for the wait-time histogram: lib/begin.lua); arq's job
-- definition is not written, as nothing reads it. It waits in its project's line (lib/fair.lua),
-- on arq's set once it is the project's head; then one idle worker of the queue is woken (lib/wake.lua).
-- The queue joins the partition's known queues ({taskd}:queues): a scheduled task due, a dependent
-- released, a retry or a reclaimed run may go on a queue no process's config names any more (renamed,
-- removed, a type routed elsewhere since its submit); the keeper, the health and `taskd queues` read
-- that set, so such a task is still kept and told of rather than left to expire unseen. A submit
-- does not add it: its queue is one its node's config names, which that node added at its start.
-- Keys built here follow taskd.keys (arq's layout, under the hash tag {taskd}: docs/cluster.md).
-- Returns the new job id.
-- include lib/fair.lua
-- include lib/wake.lua
local function enqueue(task_key, task_id, queue, score, now_ms, aging_ms)
  redis.call('SADD', '@QUEUES@', queue)
  local n = redis.call('HINCRBY', task_key, 'enqueues', 1)
  local job_id = task_id .. '.' .. n
  redis.call('HSET', task_key, 'job_id', job_id, 'enqueued_ms', now_ms)
  -- Behind its project's head it is not on arq's set yet: nothing to wake a worker for.
  if not wait_in_line(task_key, job_id, score, now_ms, aging_ms) then wake_one(queue) end
  return job_id
end
