-- position.lua: where queued tasks stand in their queues now, under fair turns between projects.
--
-- KEYS[1]  partition  a name in the tasks' partition's slot ({taskd}:none, taskd.keys.no_key), never
--                     read or written: each task's key is built here from its id, in that partition
-- ARGV[1..] tasks     the tasks, three values each: the task's id, its current arq job id and the
--                     reader's now, in ms (the other projects' jobs due then are counted)
-- The status reads of queued tasks made at once in one process come in one call
-- (taskd/store/coalesce.py), so that lib/fair.lua reads each queue's heads, their scores and the
-- lines' lengths once for all of them, not once a task: with thousands of projects waiting on a
-- queue, those reads are most of what a position costs.
-- Each task's record hash ({taskd}:task:{id}) gives its queue and project_id, which name the lines:
-- through lib/fair.lua it reads {taskd}:project_waiting:{queue}:{project_id} of every project with
-- a job waiting on the queue, {taskd}:heads:{queue} and arq's {taskd}:queue:{queue}.
-- Returns each task's 1-based position (lib/fair.lua's place: how many start before it, plus
-- one), in order; 0 when the task is not waiting with that job; {'error', message} for a task
-- whose reading failed (a malformed record), so that it fails that read alone, not the others.
-- include lib/fair.lua
local function position(task_id, job_id, now_ms)
  local record = redis.call('HMGET', '@TASK_PREFIX@' .. task_id, 'status', 'job_id', 'queue', 'project_id')
  if record[1] ~= 'queued' or record[2] ~= job_id then return 0 end
  return place(record[3], record[4], job_id, now_ms)
end

local positions = {}
for i = 1, #ARGV, 3 do
  local ok, reply = pcall(position, ARGV[i], ARGV[i + 1], ARGV[i + 2])
  if not ok then
    -- A command's error comes as a table with its message in `err`.
    reply = {'error', type(reply) == 'table' and reply.err or tostring(reply)}
  end
  positions[#positions + 1] = reply
end
return positions
