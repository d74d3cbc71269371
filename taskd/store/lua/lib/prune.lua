-- lib/prune.lua: prune_due(marker), whether a project's set may be read through now to drop the
-- ids whose task is gone.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the marker's key.
-- KEYS: none
-- ARGV: none
--   marker  the set's marker ({taskd}:project_active_pruned:{project_id} for the waiting cap,
--           {taskd}:project_processing_pruned:{project_id} for the throttle)
--
-- A project's active and processing sets lose a task's id when the task ends; an id stays only
-- when its record went without an end (it expired while its task waited, a failover lost the
-- end). So when the waiting cap or the throttle is reached, the set is read through, a record
-- per member, and the ids whose task is gone dropped, before the caller says no. That read is one
-- HGET per member: at the default cap of 10,000, ~23 ms of Valkey's one thread, paid again by
-- every refused submit (a client retrying its 429s held Valkey for every tenant at ~40 tries a
-- second), and by every take that passed over a throttled project. So a set is read through at
-- most once a PRUNE_EVERY_MS: the marker is set for that long by the read, and while it lives the
-- caller counts the set as it is. A place held by a gone record is given back within that time.
-- Returns true when the caller may read the set through now (the marker is set for it).
local function prune_due(marker)
  return redis.call('SET', marker, '1', 'PX', @PRUNE_EVERY_MS@, 'NX') ~= false
end
