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
--   ttl          seconds the record is kept from now (storage.task_ttl)
--
-- Counts the end, frees the task's place among its project's active tasks
-- (taskd:project_active:{project_id}) and processing ones (taskd:project_processing:{project_id},
-- the throttle start.lua keeps), queues its webhook when it has a callback_url and its
-- webhook_events include this end (lib/webhook_event.lua; waking the senders on
-- taskd:webhooks:wake), keeps the record for `ttl` and emits a status event.
-- Returns nothing.
-- include lib/emit.lua
-- include lib/webhook_event.lua
local function ended(task_key, metrics_key, outbox_key, counter, per_type, task_id, now_ms, ttl)
  redis.call('HINCRBY', metrics_key, counter, 1)
  if per_type then
    redis.call('HINCRBY', metrics_key, per_type .. ':' .. redis.call('HGET', task_key, 'task_type'), 1)
  end
  local project = redis.call('HGET', task_key, 'project_id')
  redis.call('SREM', '@ACTIVE_PREFIX@' .. project, task_id)
  redis.call('SREM', '@PROCESSING_PREFIX@' .. project, task_id)
  if wants_webhook(task_key, (string.gsub(counter, '_tasks$', ''))) then
    redis.call('ZADD', outbox_key, now_ms, task_id)
    redis.call('PUBLISH', '@WEBHOOKS_WAKE@', task_id)
  end
  redis.call('EXPIRE', task_key, ttl)
  emit(task_key, 'status')
end
