-- lib/ended.lua: ended(task_key, metrics_key, outbox_key, counter, per_type, task_id, now_ms, ttl),
-- what every end of a task (completed, failed, cancelled) also does.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the keys and values it works on.
-- KEYS: none
-- ARGV: none
--   task_key     the task's record hash (taskd:task:{id}), already holding its end state
--   metrics_key  the shared counters (taskd:metrics)
--   outbox_key   the webhook outbox (taskd:webhooks:due)
--   counter      the metrics counter to add one to: completed_tasks, failed_tasks or cancelled_tasks
--   per_type     prefix of a per-task-type counter to add one to ({per_type}:{task type}), or nil
--   task_id      the task's id
--   now_ms       now, in ms: when its webhook is due
--   ttl          seconds the record is kept from now (storage.task_ttl), unless the record has its
--                own `keep_for` (the submission's), which wins
--
-- Counts the end, frees the task's place among its project's active tasks
-- (taskd:project_active:{project_id}) and processing ones (taskd:project_processing:{project_id},
-- the throttle start.lua keeps), queues its webhook when it has a callback_url (waking the
-- senders on taskd:webhooks:wake), keeps the record for its `keep_for` or `ttl` (and, with a
-- `keep_for`, the project's index taskd:project:{project_id} at least as long, so the task stays in
-- the project's list) and emits a status event.
-- Returns nothing.
-- include lib/emit.lua
local function ended(task_key, metrics_key, outbox_key, counter, per_type, task_id, now_ms, ttl)
  redis.call('HINCRBY', metrics_key, counter, 1)
  if per_type then
    redis.call('HINCRBY', metrics_key, per_type .. ':' .. redis.call('HGET', task_key, 'task_type'), 1)
  end
  local project = redis.call('HGET', task_key, 'project_id')
  redis.call('SREM', '@ACTIVE_PREFIX@' .. project, task_id)
  redis.call('SREM', '@PROCESSING_PREFIX@' .. project, task_id)
  if redis.call('HEXISTS', task_key, 'callback_url') == 1 then
    redis.call('ZADD', outbox_key, now_ms, task_id)
    redis.call('PUBLISH', '@WEBHOOKS_WAKE@', task_id)
  end
  local keep_for = redis.call('HGET', task_key, 'keep_for')
  if keep_for then
    ttl = keep_for
    local index = '@PROJECT_PREFIX@' .. project
    if redis.call('TTL', index) < tonumber(keep_for) then redis.call('EXPIRE', index, keep_for) end
  end
  redis.call('EXPIRE', task_key, ttl)
  emit(task_key, 'status')
end
