-- acquire.lua: takes a slot of an outside provider for one request, if the provider's limits allow it now
-- and it is the request's turn.
--
-- Two limits, shared by every taskd process on every host (Redis's own clock is used, so all
-- agree): at most `limit` requests in flight at once, each holding its slot until it is released
-- or its lease ends (so a worker that died while holding one gives it back after one lease), and
-- at most `per_minute` requests sent in any 60 s (a sliding log, as taskd/http/lua/window.lua).
-- A request enters the minute's log only when it gets its slot: a refused try costs nothing.
--
-- Projects take turns for what the limits let through. A holder's name ends in `|<project id>`
-- (a project id has no `|`), so the slots say which project holds each. A request that is refused
-- waits in line: in `waiters` until a grace after it said it would ask again (a waiter that stops
-- asking, its worker dead or its task cancelled unseen, drops out then), in its project's line by
-- when it first asked, and its project in `turns` by when its turn began (it started waiting, or
-- its last request was let through or ended: release.lua). While anyone waits, the free slots and
-- places go to as many waiters in the order of turns: each to the first in line of the waiting
-- project that holds the fewest slots, the one whose turn began earliest among equals, counting
-- the slots given before it (lib/turns.lua's `place`): a project with 200 requests waiting takes
-- one turn, then another project's single one goes. Each takes its own as it asks, not after the
-- ones before it. With no one waiting a request takes a free slot at once, as without turns (one
-- ZCARD of `waiters` more).
-- KEYS[1]  slots        {taskd}:provider:{name}:slots, holder -> ms its lease ends
-- KEYS[2]  minute       {taskd}:provider:{name}:minute, times (ms) of the requests sent -> themselves
-- KEYS[3]  waiters      {taskd}:provider:{name}:waiters, waiting holder -> ms it is dropped unless it asks again
-- KEYS[4]  turns        {taskd}:provider:{name}:turns, project with a request waiting -> ms its turn began
-- ARGV[1]  limit        requests in flight at once (0 = unlimited: no slot is recorded)
-- ARGV[2]  per_minute   requests per 60 s (0 = unlimited: nothing is logged)
-- ARGV[3]  lease        ms a slot stays held without a renewal
-- ARGV[4]  holder       a name unique to this request, ending in `|<project id>`
-- ARGV[5]  grace        ms a waiter stays in line past the time it said it would ask again
-- ARGV[6]  line_prefix  {taskd}:provider:{name}:line:, a project's line (holder -> ms it first asked) is this + its id
-- ARGV[7]  soon         ms the waiters whose turn comes next wait before they ask again, at most
-- ARGV[8]  told         waiters fewer than this many releases from their turn are told how soon to ask again
-- Returns {outcome, wait ms}: outcome 1 when the slot is taken (wait 0); 0 when every slot is held,
-- with the time until the first lease ends (a slot released earlier frees sooner: callers ask
-- again within a quarter second; those whose turn comes within `told` releases within a `soon`
-- for each, the next ones within `soon`), or when a slot is free but it is other waiters' turn
-- (wait: the grace, or as just said); -1 when the minute's requests are spent, with the time
-- until the oldest leaves the window.
-- include lib/turns.lua
local limit = tonumber(ARGV[1])
local per_minute = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
local holder = ARGV[4]
local grace = tonumber(ARGV[5])
local line_prefix = ARGV[6]
local soon = tonumber(ARGV[7])
local told = tonumber(ARGV[8])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local outcome, wait = 1, 0
-- The requests the limits let through now (any number with neither).
local free = math.huge
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  free = limit - redis.call('ZCARD', KEYS[1])
  if free <= 0 then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
    outcome, wait = 0, math.max(1, tonumber(first) - now)
  end
end
if outcome == 1 and per_minute > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000)
  free = math.min(free, per_minute - redis.call('ZCARD', KEYS[2]))
  if free <= 0 then
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2]
    outcome, wait = -1, math.max(1, tonumber(oldest) + 60000 - now)
  end
end
local contested = redis.call('ZCARD', KEYS[3]) > 0 and drop_gone(KEYS[3], KEYS[4], line_prefix, now)
if outcome == 1 and not contested then
  return take(KEYS[1], KEYS[2], now, limit, per_minute, lease, holder)
end
-- A waiter asks again within a poll interval after 0 (a slot frees at any moment), after its wait
-- after -1; it stays in line until a grace later.
local project = project_of(holder)
local line = line_prefix .. project
local asks_by = now + grace + (outcome == -1 and wait or 0)
if redis.call('ZADD', KEYS[3], asks_by, holder) == 1 then
  redis.call('ZADD', line, 'NX', now, holder)
  redis.call('ZADD', KEYS[4], 'NX', now, project)
end
-- Every waiter is in all three until it leaves: they expire together, a grace after the latest
-- time any of them said it would ask again (at most a minute's wait).
local keep = grace + 60000
redis.call('PEXPIRE', KEYS[3], keep)
redis.call('PEXPIRE', KEYS[4], keep)
redis.call('PEXPIRE', line, keep)
if outcome == -1 then
  return {outcome, wait}
end
-- Its place in the order the waiters get slots (lib/turns.lua's `place`): those before `free` take
-- one each, as they ask, so several slots freed at once are all taken within a `soon` or so. The
-- first `told` others ask again the sooner the fewer slots must be released before their turn
-- (beyond the `batch` held or free, which may all come free at once: those ask every `soon`), so
-- that each has asked by the time its turn comes and a slot freed for it is not left unused for
-- most of a poll interval while the others' turns wait too. Only those that may be that near, by
-- their place in their own line, read the slots' holders and the turns.
if outcome == 0 then
  free = 0
end
local rank = redis.call('ZRANK', line, holder)
if not rank then
  -- In `waiters` but not in its line: the line was lost (an evicting Redis), or expired as the
  -- waiter came due to drop. It joins again, behind its project's others.
  redis.call('ZADD', line, now, holder)
  redis.call('PEXPIRE', line, keep)
  rank = redis.call('ZCARD', line) - 1
end
local steps = math.max(told, free)
local at = rank < steps and place(KEYS[1], KEYS[4], line_prefix, limit, project, rank, steps)
if rank < steps and not at and not redis.call('ZSCORE', KEYS[4], project) then
  -- Waiting, but its project has no turn (the turns lost): it would never be given a slot; its
  -- turn begins now.
  redis.call('ZADD', KEYS[4], now, project)
  redis.call('PEXPIRE', KEYS[4], keep)
end
if at and at < free then
  redis.call('ZREM', KEYS[3], holder)
  leave_line(KEYS[4], line_prefix, holder, now, true)
  return take(KEYS[1], KEYS[2], now, limit, per_minute, lease, holder)
end
local batch = math.max(limit, free)
local asks_in = at and at < told and soon * math.max(1, at - batch + 1) or nil
if outcome == 0 then
  return {0, asks_in and math.min(wait, asks_in) or wait}
end
return {0, asks_in or grace}
