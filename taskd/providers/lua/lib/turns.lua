-- lib/turns.lua: the projects' turns for a provider's slots (acquire.lua, release.lua).
--
-- A library: the scripts that include it get it prepended; its callers pass the keys.
-- KEYS: none
-- ARGV: none
--
--   project_of(holder)                                   the project a holder's name ends with (`|<id>`)
--   drop_gone(waiters, turns, line_prefix, now)          drops the waiters past their time; whether any is left
--   leave_line(turns, line_prefix, holder, now, turned)  takes a waiter out of its project's line (the caller
--                                                        takes it out of `waiters`); `turned`: it was let
--                                                        through, so its project's turn begins again now
--   place(slots, turns, line_prefix, limit, project, rank, steps)  the place (from 0) of the waiter
--                                                        `rank`th (from 0) in `project`'s line in the order
--                                                        the waiters get slots, none released first: the
--                                                        project holding the fewest (those given one
--                                                        counted), the earliest turn among equals; nil
--                                                        when `steps` places or more away
--   take(slots, minute, now, limit, per_minute, lease, holder)  takes the slot and the minute's place: {1, 0}
--     waiters      {taskd}:provider:{name}:waiters, waiting holder -> ms it is dropped unless it asks again
--     turns        {taskd}:provider:{name}:turns, project with a request waiting -> ms its turn began
--     line_prefix  {taskd}:provider:{name}:line:, + a project id: its line, holder -> ms it first asked
--     slots, minute, limit, per_minute, lease: as acquire.lua's
-- Returns: as said above.

local function project_of(holder)
  -- A holder named before projects took turns has no project: its requests count as one of their own.
  return string.match(holder, '|([^|]*)$') or ''
end

local function leave_line(turns, line_prefix, holder, now, turned)
  local project = project_of(holder)
  local line = line_prefix .. project
  redis.call('ZREM', line, holder)
  if redis.call('ZCARD', line) == 0 then
    redis.call('ZREM', turns, project)
  elseif turned then
    redis.call('ZADD', turns, 'XX', now, project)
  end
end

local function drop_gone(waiters, turns, line_prefix, now)
  local gone = redis.call('ZRANGEBYSCORE', waiters, '-inf', '(' .. now)
  if #gone == 0 then
    return true
  end
  for _, holder in ipairs(gone) do
    leave_line(turns, line_prefix, holder, now, false)
  end
  redis.call('ZREMRANGEBYSCORE', waiters, '-inf', '(' .. now)
  return redis.call('ZCARD', waiters) > 0
end

local function place(slots, turns, line_prefix, limit, project, rank, steps)
  local held = {}
  if limit > 0 then
    for _, holder in ipairs(redis.call('ZRANGE', slots, 0, -1)) do
      local p = project_of(holder)
      held[p] = (held[p] or 0) + 1
    end
  end
  -- The projects by the slots they hold, each count's in the order of their turns. At most
  -- `limit` projects hold a slot and `steps` are given one: of the first limit + steps in turn,
  -- one holds none and has been given none at every step, and none after it can come before it.
  local queues = {}
  for _, p in ipairs(redis.call('ZRANGE', turns, 0, limit + steps - 1)) do
    local count = held[p] or 0
    queues[count] = queues[count] or {first = 1}
    table.insert(queues[count], p)
  end
  local given, waiting = {}, {}
  local fewest = 0
  local k = 0
  while k < steps do
    local queue = queues[fewest]
    -- A queue only grows behind its first (a project given a slot joins the next count's), so the
    -- fewest held only rises.
    while queue == nil or queue.first > #queue do
      queues[fewest] = nil
      if next(queues) == nil then
        return nil
      end
      fewest = fewest + 1
      queue = queues[fewest]
    end
    local p = queue[queue.first]
    queue.first = queue.first + 1
    local n = given[p] or 0
    waiting[p] = waiting[p] or redis.call('ZCARD', line_prefix .. p)
    if waiting[p] == 0 then
      -- In the turns with no line: its line was lost (an evicting Redis). It would take a place
      -- no waiter can have for good; its live waiters, if any, join its line and the turns again
      -- as they ask (acquire.lua).
      redis.call('ZREM', turns, p)
    elseif p == project and n == rank then
      return k
    else
      -- Given a slot, its turn begins again now, after every other's; it leaves the turns when
      -- every request of its line has one.
      given[p] = n + 1
      if n + 1 < waiting[p] then
        local count = (held[p] or 0) + n + 1
        queues[count] = queues[count] or {first = 1}
        table.insert(queues[count], p)
      end
      k = k + 1
    end
  end
  return nil
end

local function take(slots, minute, now, limit, per_minute, lease, holder)
  if per_minute > 0 then
    redis.call('ZADD', minute, now, now .. ':' .. holder)
    redis.call('PEXPIRE', minute, 60000)
  end
  if limit > 0 then
    redis.call('ZADD', slots, now + lease, holder)
    -- Every lease is as long as this one and began no later, so none outlives the key.
    redis.call('PEXPIRE', slots, lease)
  end
  return {1, 0}
end
