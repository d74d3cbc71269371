-- list.lua: one stretch of a project's task index read for a listing, newest first: the ids whose
-- record is gone are dropped from the index, the others matched against the filters.
--
-- KEYS[1]  index      {taskd}:project:{project_id} (task id -> created ms)
-- ARGV[1]  from       the first rank to read (0: the newest)
-- ARGV[2]  count      how many ids to read from there
-- ARGV[3]  status     the status a task must have ('' for any)
-- ARGV[4]  task_type  the task type a task must have ('' for any)
-- ARGV[5]  skip       how many of the stretch's matches to pass over before returning ids (the
--                     page's offset less the matches of the stretches before; may be below 0)
-- ARGV[6]  want       the most matching ids to return
-- ARGV[7]  newest     the highest score (created ms) read: '+inf' at a listing's first call, then
--                     what that call returned, so that the tasks created during a listing neither
--                     show in it nor move the ranks of its later stretches
-- The listing (taskd.store.records.TaskStore.list_project) reads the whole index this way, a
-- stretch per call, so that its count of matches is exact while Valkey is never held for more
-- than one stretch; the API process gets only the page's ids and the counts, not a reply per task.
-- Returns {matched, read, dropped, newest, id...}: how many of the stretch matched, how many ids
-- were read (fewer than `count` at the index's end), how many were dropped (the ranks after them
-- moved up by as many), the score bound of the listing's next calls (`newest`, or for '+inf' the
-- score of the newest id read), and the matching ids from the skip-th on, at most `want`.
local read = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[7], '-inf', 'WITHSCORES', 'LIMIT', tonumber(ARGV[1]),
  tonumber(ARGV[2]))
local status, task_type = ARGV[3], ARGV[4]
local skip, want = tonumber(ARGV[5]), tonumber(ARGV[6])
local filtered = status ~= '' or task_type ~= ''
local newest = ARGV[7]
if newest == '+inf' and #read > 0 then newest = read[2] end
local reply = {0, #read / 2, 0, newest}
local matched, gone = 0, {}
for i = 1, #read, 2 do
  local id = read[i]
  local key = '@TASK_PREFIX@' .. id
  local found
  if filtered then
    local fields = redis.call('HMGET', key, 'status', 'task_type')
    -- Neither field: the record is gone (EXISTS only tells it from a record without them).
    if fields[1] == false and fields[2] == false and redis.call('EXISTS', key) == 0 then
      gone[#gone + 1] = id
    else
      found = (status == '' or fields[1] == status) and (task_type == '' or fields[2] == task_type)
    end
  else
    found = redis.call('EXISTS', key) == 1
    if not found then gone[#gone + 1] = id end
  end
  if found then
    matched = matched + 1
    if matched > skip and #reply - 4 < want then reply[#reply + 1] = id end
  end
end
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
reply[1], reply[3] = matched, #gone
return reply
