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
--   next_turn(slots, turns, limit)                       the project whose turn it is
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

local function next_turn(slots, turns, limit)
  local held = {}
  if limit > 0 then
    for _, holder in ipairs(redis.call('ZRANGE', slots, 0, -1)) do
      local project = project_of(holder)
      held[project] = (held[project] or 0) + 1
    end
  end
  -- At most `limit` projects hold a slot: of the first limit + 1 in turn, one holds none, and
  -- none after it can come before it.
  local best, fewest
  for _, project in ipairs(redis.call('ZRANGE', turns, 0, limit)) do
    local count = held[project] or 0
    if fewest == nil or count < fewest then
      best, fewest = project, count
    end
    if count == 0 then
      break
    end
  end
  return best
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
