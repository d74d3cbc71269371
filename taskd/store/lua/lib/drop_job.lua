-- lib/drop_job.lua: drop_job(task_key, queue_key, job_id), removes the task's current arq job.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the keys it works on.
-- KEYS: none
-- ARGV: none
--   task_key   the task's record hash ({taskd}:task:{id}); its job_id field names the job
--   queue_key  arq's sorted set of the task's queue ({taskd}:queue:{queue})
--   job_id     optional: the record's job_id as the caller read it (false: none); read when nil
--
-- Deletes the job's lock ({taskd}:arq:in-progress:{job id}, held by a worker that claims one job at a
-- time) and takes it off the queue, in the script that ends or requeues the task, so the worker
-- need not drop it in a round trip of its own. (No job definition is written since the record
-- holds what a job needs; those of earlier versions expire a day past their score.)
-- Returns nothing.
local function drop_job(task_key, queue_key, job_id)
  if job_id == nil then job_id = redis.call('HGET', task_key, 'job_id') end
  if job_id then
    redis.call('DEL', '@IN_PROGRESS_PREFIX@' .. job_id)
    redis.call('ZREM', queue_key, job_id)
  end
end
