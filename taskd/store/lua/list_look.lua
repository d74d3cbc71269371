-- list_look.lua: a listing's first call: whether the project's counts kept by list_keep.lua still
-- hold, and if so the listing's count and where its page is, so that it reads no more of the
-- index than its page needs.
--
-- KEYS[1]  index   {taskd}:project:{project_id} (task id -> created ms)
-- KEYS[2]  events  {taskd}:events:project:{project_id}, the project's event stream
-- KEYS[3]  counts  {taskd}:project_counts:{project_id} (list_keep.lua)
-- ARGV[1]  key     the listing's filter key: 'a' (none), 's:<status>', 't:<task_type>' or
--                  'b:<status>\n<task_type>' (list.lua's census)
-- ARGV[2]  offset  how many matching tasks come before the page
-- ARGV[3]  limit   the page's size
-- ARGV[4]  count   how many ids list.lua reads a call (a stretch)
-- The counts hold while nothing a listing shows has changed since they were made: every change of
-- a task's status, and every submit, appends a status event to the project's event stream
-- (lib/emit.lua), so the newest one's id is the project's version (lib/listed.lua); and a record leaves only when it expires, no earlier than
-- `until`, the first expiry among the records counted. With them, the index holds only tasks that
-- exist (the census dropped the others, and none was added or expired since), so a rank in it is a
-- rank among the listing's tasks: the page of an unfiltered listing is read by rank, and a
-- filtered one starts at the stretch its offset falls in (the census's checkpoints: how many tasks
-- matched each filter before each stretch), not at the top.
-- Returns one of
--   {0, version, size, census}       not kept (or no longer true): the version (lib/listed.lua),
--                                    which list_keep.lua is given, the index's size, and 1 when
--                                    the project last changed LIST_QUIET_MS ago or more and has
--                                    an event stream (its listing counts for keeps: list.lua's
--                                    census), else 0
--   {1, total, id...}                kept, and the page's ids are here (an unfiltered listing whose
--                                    page is at most a stretch; none past the end)
--   {2, total, below, seen, skip, calls}  kept: the page starts `skip` matches after list.lua's
--                                    position (`below`, `seen`), and ends within `calls` stretches
-- include lib/listed.lua
local version, changed_ms = listed_version(KEYS[2])
local key, offset, limit, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local kept = redis.call('HMGET', KEYS[3], 'v', 'u', 'c:' .. key, 'k:' .. key, 'k:a')
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
-- The reply when the counts are not kept, or not true.
local function not_kept()
  -- A project that changed within LIST_QUIET_MS most likely changes again before the next request:
  -- counted for keeps, it would cost twice a plain count (list.lua) for nothing. Nor is a project
  -- without an event stream (none for events_ttl, while records with a longer `keep_for` stay):
  -- its version, '', comes back each time a stream expires, so counts kept against it would hold
  -- again once the stream of a later submit had expired, without that task.
  local census = 0
  if version ~= '' and now_ms - changed_ms >= @LIST_QUIET_MS@ then census = 1 end
  return {0, version, redis.call('ZCARD', KEYS[1]), census}
end
if kept[1] ~= version or (kept[2] ~= '' and now_ms >= tonumber(kept[2])) then return not_kept() end
local total = tonumber(kept[3]) or 0
if offset >= total then return {1, total} end
if key == 'a' and limit <= count then
  local reply = {1, total}
  for _, id in ipairs(redis.call('ZREVRANGE', KEYS[1], offset, offset + limit - 1)) do reply[#reply + 1] = id end
  return reply
end
-- Checkpoints: before[i] matches of the filter, and ranks[i] tasks in all, came before stretch i.
local function numbers(text)
  local list = {}
  for number in string.gmatch(text or '', '[^,]+') do list[#list + 1] = tonumber(number) end
  return list
end
local before, ranks = numbers(kept[4]), numbers(kept[5])
-- The last stretch with at most `at` matches before it: the one that holds match `at` (0-based).
local function stretch_of(at)
  local found = 1
  for i = 1, #before do
    if before[i] <= at then found = i else break end
  end
  return found
end
local first = stretch_of(offset)
local calls = stretch_of(math.min(offset + limit, total) - 1) - first + 1
local rank = ranks[first] or 0
local at = redis.call('ZREVRANGE', KEYS[1], rank, rank, 'WITHSCORES')
local below = at[2]
-- Kept counts that a rank falls outside of are not true (the index was changed by hand).
if not below then return not_kept() end
-- list.lua's `seen`: the ids of that very score ranked before it.
local seen = rank - redis.call('ZCOUNT', KEYS[1], '(' .. below, '+inf')
return {2, total, below, seen, offset - (before[first] or 0), calls}
