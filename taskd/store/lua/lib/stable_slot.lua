-- lib/stable_slot.lua: stable_slot(key), what every script of taskd runs before anything else
-- (taskd.store.scripts prepends it and its call on KEYS[1] to each; gpu/acquire.lua, which declares
-- no key, calls it on a key prefix of its slot).
--
-- The scripts build most of their keys inside the Lua (docs/cluster.md), which a cluster checks only
-- as each is touched, and a script that fails half-way keeps what it wrote before. While a resharding
-- moves the keys of a slot one by one, a script on the old owner could write a task's end, then meet a
-- key already moved and stop there: the record ended, the task still in the running and project sets,
-- and the worker's retry turned away because the record has ended. A key that does not exist counts as
-- moved from the first moment of a migration on, so reading the slot's never-written key fails the
-- script cleanly, before its first write, with the error of any key met there ("Attempted to access a
-- non local key": a 503, a retry, taskd.redis_conn.slot_elsewhere). Outside a migration the node
-- serves every key of the slot for the whole script, which nothing interrupts.
-- KEYS: none
-- ARGV: none
--   key  a key of the script's slot (or a prefix of one): its hash tag names the slot; a key without
--        one is not taskd's, and is left unchecked
-- Returns nothing; raises the node's error while the slot is not served here whole.
local function stable_slot(key)
  local tag = string.match(key, '^{[^}]*}:')
  if tag then redis.call('EXISTS', tag .. '@NO_KEY_NAME@') end
end
