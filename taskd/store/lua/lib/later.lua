-- lib/later.lua: later_writes(metrics_key), the writes of a script's steps that it makes once, at its
-- end, for all of them: count(later, field, by, float) for a counter, count_in_bucket(later, prefix,
-- value, bounds) for a histogram's bucket, add_to(later, command, key, ...)
-- for the members a ZADD, ZREM, SADD or SREM gives or takes (pending(later, command, key): how many
-- values wait for that command on that key), expire_later(later, key, ttl) for an expiry,
-- keep_later(later, key, ttl) for an expiry pushed back but never shortened, and write_later(later),
-- which writes them. `trimmed` holds the event streams lib/emit.lua has trimmed of old events in the
-- script: once each.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the keys and values it works on.
-- KEYS: none
-- ARGV: none
--   metrics_key  the shared counters ({taskd}:metrics) the counts go to
--   field        a counter's field; `by` is added to it (HINCRBYFLOAT when `float`, else HINCRBY)
--   prefix, value, bounds  one is counted in `prefix` .. the first of `bounds` (a histogram's upper
--                bounds, ascending) that `value` fits under; none past the last (+Inf is the count)
--   command      'ZADD' (score, member, ...), 'ZREM', 'SADD' or 'SREM' (member, ...): each command on each
--                key is one call, with every value given for it
--   ttl          seconds: expire_later sets the key's expiry once (the last `ttl` given for it);
--                keep_later once too, to the longest `ttl` given for it, and only where the key's
--                expiry is sooner than that (TTL, then EXPIRE): a project's index and active set,
--                which a task kept longer (scheduled days ahead, a long `keep_for`) keeps longer
--
-- A take's starts (lib/begin.lua), a finish's ends (finish.lua) and the submits of one call
-- (submit.lua, batch.lua: lib/admit.lua) write the same counters, sets and expiries for each task
-- of their batch; summed here they are one command per counter
-- and key instead of one per task (docs/performance.md, "Redis cost per task"). The steps read
-- records, lines and heads, and these are counters, the running and project sets, expiries and a
-- take's starts leaving the lines. Two steps read what is left for later, and count it in: the
-- throttle of a take's starts (a project's processing set: what `pending` says waits for it) and a
-- take's look ahead in a project's line, which knows which of its jobs left (lib/fair.lua).
-- Returns: later_writes the table the others fill; pending a count; the others nothing.
local function later_writes(metrics_key)
  return {metrics = metrics_key, names = {}, by = {}, float = {}, groups = {}, members = {}, expiring = {},
          ttl = {}, keeping = {}, kept = {}, trimmed = {}}
end

local function count(later, field, by, float)
  if later.by[field] == nil then
    later.names[#later.names + 1] = field
    later.by[field], later.float[field] = 0, float
  end
  later.by[field] = later.by[field] + by
end

local function count_in_bucket(later, prefix, value, bounds)
  for _, le in ipairs(bounds) do
    if value <= le then
      count(later, prefix .. le, 1)
      return
    end
  end
end

local function add_to(later, command, key, ...)
  local group = command .. ' ' .. key
  local values = later.members[group]
  if not values then
    values = {}
    later.members[group] = values
    later.groups[#later.groups + 1] = {command, key, values}
  end
  for _, value in ipairs({...}) do values[#values + 1] = value end
end

local function pending(later, command, key)
  local values = later.members[command .. ' ' .. key]
  return values and #values or 0
end

local function expire_later(later, key, ttl)
  if later.ttl[key] == nil then later.expiring[#later.expiring + 1] = key end
  later.ttl[key] = ttl
end

local function keep_later(later, key, ttl)
  local was = later.kept[key]
  if was == nil then later.keeping[#later.keeping + 1] = key end
  if was == nil or ttl > was then later.kept[key] = ttl end
end

local function write_later(later)
  for _, field in ipairs(later.names) do
    redis.call(later.float[field] and 'HINCRBYFLOAT' or 'HINCRBY', later.metrics, field, later.by[field])
  end
  -- The values in chunks: Lua's unpack() takes at most ~8000 (an even chunk keeps ZADD's pairs whole).
  for _, group in ipairs(later.groups) do
    local values = group[3]
    for first = 1, #values, 1000 do
      redis.call(group[1], group[2], unpack(values, first, math.min(first + 999, #values)))
    end
  end
  for _, key in ipairs(later.expiring) do redis.call('EXPIRE', key, later.ttl[key]) end
  -- TTL is -1 for a key just made (no expiry yet), and a whole number of seconds.
  for _, key in ipairs(later.keeping) do
    local ttl = later.kept[key]
    if redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
  end
end
