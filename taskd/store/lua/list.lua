-- list.lua: one stretch of a project's task index read for a listing, newest first: the ids whose
-- record is gone are dropped from the index, the others matched against the filters.
--
-- KEYS[1]  index      {taskd}:project:{project_id} (task id -> created ms)
-- ARGV[1]  below      the highest score (created ms) to read: '+inf' at a listing's first call,
--                     then what the call before returned
-- ARGV[2]  seen       how many ids scored exactly `below` the calls before read and kept (they
--                     come first, and are passed over): 0 at the first call
-- ARGV[3]  count      how many ids to read
-- ARGV[4]  status     the status a task must have ('' for any)
-- ARGV[5]  task_type  the task type a task must have ('' for any)
-- ARGV[6]  skip       how many of the stretch's matches to pass over before returning ids (the
--                     page's offset less the matches of the stretches before; may be below 0)
-- ARGV[7]  want       the most matching ids to return
-- ARGV[8]  census     '1': also count the stretch's tasks under every filter a listing can take,
--                     and tell when the first of them expires (a listing that reads the whole
--                     index keeps these for the next ones: list_look.lua, list_keep.lua); ''
--                     when the listing's count is known and it only looks for its page
-- The listing (taskd.store.records.TaskStore.list_project) reads the whole index this way, a
-- stretch per call, when its project's counts are not kept (list_look.lua), so that its count of
-- matches is exact while Valkey is never held for more than one stretch; the API process gets
-- only the page's ids and the counts, not a reply per task.
-- Each stretch starts where the one before ended, by score, not by rank: finding it costs a
-- stretch no more the further it is, and the tasks submitted during a listing (newer, so above
-- where it is) neither show in it nor make it read an id twice.
-- Returns {matched, read, below, seen, census, id...}: how many of the stretch matched, how many
-- ids were read (fewer than `count` at the index's end), the next call's `below` and `seen`, the
-- census (JSON: `counts`, '<status>\n<task_type>' -> how many of the stretch's kept tasks have
-- both, which the listing adds up per filter; `soonest`, when the first of
-- their records expires, in ms of Valkey's clock, -1 for none; '' without `census`), and the
-- matching ids from the skip-th on, at most `want`.
local below, seen = ARGV[1], tonumber(ARGV[2])
local read = redis.call('ZREVRANGEBYSCORE', KEYS[1], below, '-inf', 'WITHSCORES', 'LIMIT', seen, tonumber(ARGV[3]))
local status, task_type = ARGV[4], ARGV[5]
local skip, want = tonumber(ARGV[6]), tonumber(ARGV[7])
local census = ARGV[8] == '1'
local filtered = status ~= '' or task_type ~= ''
local reply = {0, #read / 2, below, seen, ''}
local matched, gone = 0, {}
local counts, soonest = {}, -1
for i = 1, #read, 2 do
  local id, score = read[i], read[i + 1]
  if score ~= reply[3] then reply[3], reply[4] = score, 0 end
  local key = '@TASK_PREFIX@' .. id
  local kept, found = true, false
  if filtered or census then
    local fields = redis.call('HMGET', key, 'status', 'task_type')
    -- Neither field: the record is gone (EXISTS only tells it from a record without them).
    if fields[1] == false and fields[2] == false and redis.call('EXISTS', key) == 0 then
      kept = false
    else
      found = (status == '' or fields[1] == status) and (task_type == '' or fields[2] == task_type)
      if census then
        local both = (fields[1] or '') .. '\n' .. (fields[2] or '')
        counts[both] = (counts[both] or 0) + 1
        local left = redis.call('PTTL', key)
        if left >= 0 and (soonest < 0 or left < soonest) then soonest = left end
      end
    end
  else
    kept = redis.call('EXISTS', key) == 1
    found = kept
  end
  if kept then
    reply[4] = reply[4] + 1
  else
    gone[#gone + 1] = id
  end
  if found then
    matched = matched + 1
    if matched > skip and #reply - 5 < want then reply[#reply + 1] = id end
  end
end
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
reply[1] = matched
-- An empty Lua table is encoded as a JSON object, so a stretch of gone ids only gives {}.
if census then
  if soonest >= 0 then
    local clock = redis.call('TIME')
    soonest = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) + soonest
  end
  reply[5] = cjson.encode({counts = counts, soonest = soonest})
end
return reply
