-- lib/webhook_event.lua: wants_webhook(task_key, event), queue_webhook(outbox_key, state_key, member,
-- due_ms) and queue_progress_webhook(task_key, outbox_key, state_key, task_id, now_ms, interval_ms):
-- the webhooks a task's submitter chose with `webhook_events`.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the keys and values it works on.
-- KEYS: none
-- ARGV: none
--   task_key     the task's record hash ({taskd}:task:{id})
--   event        started, progress, completed, failed or cancelled
--   outbox_key   the webhook outbox ({taskd}:webhooks:due)
--   state_key    the delivery state of that webhook ({taskd}:webhook:{id}:{event})
--   member       the webhook's member in the outbox ({id}:{event})
--   due_ms       when it is due, in ms
--   task_id      the task's id
--   now_ms       now, in ms
--   interval_ms  webhooks.progress_interval in ms
--
-- wants_webhook_record(record, event) answers the same from the record's fields by name (a table
-- the caller already read: callback_url, webhook_events).
-- wants_webhook: true when the task has a callback_url and `event` is among its webhook_events
-- (a JSON list; a record without one wants the three ends, as every task did before the field).
-- queue_webhook: makes the webhook due with a fresh delivery (its attempts count from 0 again,
-- as each `started` or `progress` webhook is a message of its own) and wakes the senders.
-- queue_progress_webhook: the coalescing of progress webhooks. While one waits in the outbox
-- nothing more is queued (the sender builds its body from the record when it sends, so it carries
-- the latest progress); the next is due no sooner than interval_ms after the last one was (the
-- record's `webhook_progress_at`, ms).
-- Returns: wants_webhook a boolean; the other two nothing.
local function wants_webhook_record(record, event)
  if not record.callback_url then return false end
  local chosen = record.webhook_events
  if not chosen then return event == 'completed' or event == 'failed' or event == 'cancelled' end
  for _, name in ipairs(cjson.decode(chosen)) do
    if name == event then return true end
  end
  return false
end

local function wants_webhook(task_key, event)
  local f = redis.call('HMGET', task_key, 'callback_url', 'webhook_events')
  return wants_webhook_record({callback_url = f[1] or nil, webhook_events = f[2] or nil}, event)
end

local function queue_webhook(outbox_key, state_key, member, due_ms)
  redis.call('DEL', state_key)
  redis.call('ZADD', outbox_key, due_ms, member)
  redis.call('PUBLISH', '@WEBHOOKS_WAKE@', member)
end

local function queue_progress_webhook(task_key, outbox_key, state_key, task_id, now_ms, interval_ms)
  local member = task_id .. ':progress'
  if not wants_webhook(task_key, 'progress') or redis.call('ZSCORE', outbox_key, member) then return end
  local last = tonumber(redis.call('HGET', task_key, 'webhook_progress_at') or '0')
  local due = math.max(tonumber(now_ms), last + tonumber(interval_ms))
  redis.call('HSET', task_key, 'webhook_progress_at', due)
  queue_webhook(outbox_key, state_key, member, due)
end
