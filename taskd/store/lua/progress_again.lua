-- progress_again.lua: queues another progress webhook when the task's progress changed while the
-- last one was being sent.
--
-- progress.lua queues nothing while a progress webhook is in the outbox, and one being sent is
-- there until its outcome is recorded; a progress written after the sender read the record would
-- otherwise never be sent. The sender calls this once its attempt is recorded.
-- KEYS[1]  task            {taskd}:task:{id}, the record hash
-- KEYS[2]  outbox          {taskd}:webhooks:due, the webhook outbox
-- KEYS[3]  progress_state  {taskd}:webhook:{id}:progress, the delivery state of its progress webhook
-- ARGV[1]  task_id         the task's id
-- ARGV[2]  sent            the record's updated_at in the body just sent (as stored)
-- ARGV[3]  now_ms          now, in ms
-- ARGV[4]  interval_ms     webhooks.progress_interval in ms
-- Returns 1 when the task still runs and changed since (a webhook is queued, unless one already
-- is); else 0.
-- include lib/webhook_event.lua
local record = redis.call('HMGET', KEYS[1], 'status', 'updated_at')
if record[1] ~= 'processing' or tonumber(record[2]) == tonumber(ARGV[2]) then return 0 end
queue_progress_webhook(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[3], ARGV[4])
return 1
