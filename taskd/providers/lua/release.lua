-- release.lua: gives a provider slot back when its request has ended, or its place in line when it
-- stopped waiting (its task cancelled).
--
-- A project whose request ends while others of its requests wait has had its turn: its next turn
-- begins now, behind the projects already waiting (lib/turns.lua, acquire.lua).
-- KEYS[1]  slots        {taskd}:provider:{name}:slots, holder -> ms its lease ends
-- KEYS[2]  waiters      {taskd}:provider:{name}:waiters, waiting holder -> ms it is dropped unless it asks again
-- KEYS[3]  turns        {taskd}:provider:{name}:turns, project with a request waiting -> ms its turn began
-- ARGV[1]  holder       the name the request acquired (or waited for) its slot under
-- ARGV[2]  line_prefix  {taskd}:provider:{name}:line:, a project's line is this + its id
-- Returns 1, or 0 when the slot was not held (its lease had ended and it was dropped, or it never
-- had one).
-- include lib/turns.lua
local holder = ARGV[1]
if redis.call('ZREM', KEYS[1], holder) == 1 then
  local project = project_of(holder)
  if redis.call('ZSCORE', KEYS[3], project) then
    local clock = redis.call('TIME')
    local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
    redis.call('ZADD', KEYS[3], 'XX', now, project)
  end
  return 1
end
if redis.call('ZREM', KEYS[2], holder) == 1 then
  leave_line(KEYS[3], ARGV[2], holder, 0, false)
end
return 0
