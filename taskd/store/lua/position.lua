-- position.lua: where a queued task stands in its queue now, under fair turns between projects.
--
-- KEYS[1]  task    {taskd}:task:{id}, the record hash (its queue and project_id name the lines)
-- ARGV[1]  job_id  the task's current arq job id
-- Through lib/fair.lua it reads {taskd}:project_waiting:{queue}:{project_id} of every project with
-- a job waiting on the queue, {taskd}:heads:{queue} and arq's {taskd}:queue:{queue}.
-- Returns the 1-based position (lib/fair.lua's place: how many start before it, plus one); 0
-- when the task is not waiting with that job.
-- include lib/fair.lua
local record = redis.call('HMGET', KEYS[1], 'status', 'job_id', 'queue', 'project_id')
if record[1] ~= 'queued' or record[2] ~= ARGV[1] then return 0 end
return place(record[3], record[4], ARGV[1])
