-- finish.lua: ends a processing task as completed or failed, if the calling worker still runs it.
--
-- Drops the task's arq job (a claimed one's lock and place on arq's set), writes its end, counts it
-- (a completed task's duration also feeds the per-type sum, count and histogram bucket), and,
-- through ended(), frees its project slot, makes its webhook due and emits the event. A task
-- cancelled or taken over meanwhile is left as it is.
-- With a `webhook_lease`, the end's webhook goes into the outbox already leased to the calling
-- worker's own sender, which POSTs it as soon as this returns: no claim, no wake-up in between. It
-- is in the outbox all the same, so if that process dies before the POST is recorded, the lease
-- runs out and another sender makes the attempt. A task ends once, so this delivery has made no
-- attempt yet.
-- KEYS[1]  task       {taskd}:task:{id}, the record hash
-- KEYS[2]  running    {taskd}:running:{queue}, the queue's processing tasks
-- KEYS[3]  metrics    {taskd}:metrics, the shared counters
-- KEYS[4]  outbox     {taskd}:webhooks:due, the webhook outbox
-- KEYS[5]  queue      {taskd}:queue:{queue}, arq's sorted set of the queue
-- ARGV[1]  worker_id  the calling worker's id
-- ARGV[2]  counter    'completed_tasks' or 'failed_tasks'
-- ARGV[3]  task_type  the task's type, for the per-type counters
-- ARGV[4]  duration   seconds the run took
-- ARGV[5]  ttl        seconds the record is kept from now
-- ARGV[6]  task_id    the task's id
-- ARGV[7]  now_ms     now, in ms: when its webhook is due
-- ARGV[8]  aging_ms   execution.priority_aging in ms (lib/fair.lua), for the dependents it queues
-- ARGV[9]  webhook_lease  the ms until which the caller's webhook sender holds the end's webhook,
--                     or '' (none: it is due now and every sender is woken)
-- ARGV[10..] fields   the fields to write: name, value, name, value, ...
-- Returns 'leased' when ended here with its webhook queued under the caller's lease, 'ok' when ended
-- here otherwise; else the task's status (false if the record is gone).
-- include lib/emit.lua
-- include lib/drop_job.lua
-- include lib/ended.lua
-- include lib/record.lua
-- The record once: the check here and what ended() does come from it, with the end written in.
local record = read_record(KEYS[1])
if record.status ~= 'processing' or record.worker_id ~= ARGV[1] then
  return record.status or false
end
-- A job a take started left arq's set then and has no lock (`claimed` '0', lib/begin.lua): nothing
-- to drop. A claimed one, or one started by a version before that field, is dropped.
if record.claimed ~= '0' then drop_job(KEYS[1], KEYS[5], record.job_id or false) end
if #ARGV >= 10 then redis.call('HSET', KEYS[1], unpack(ARGV, 10)) end
for i = 10, #ARGV, 2 do record[ARGV[i]] = ARGV[i + 1] end
local lease = ARGV[9] ~= '' and ARGV[9] or nil
redis.call('ZREM', KEYS[2], ARGV[6])
if ARGV[2] == 'completed_tasks' then
  redis.call('HINCRBYFLOAT', KEYS[3], 'duration_sum:' .. ARGV[3], ARGV[4])
  redis.call('HINCRBY', KEYS[3], 'duration_count:' .. ARGV[3], 1)
  -- One count, in the first bucket the duration fits (none past the last: +Inf is the count);
  -- the scrape adds them up into Prometheus's cumulative buckets (taskd.http.prom).
  local d = tonumber(ARGV[4])
  for _, le in ipairs({@DURATION_BUCKETS@}) do
    if d <= le then
      redis.call('HINCRBY', KEYS[3], 'duration_in:' .. ARGV[3] .. ':' .. le, 1)
      break
    end
  end
end
local per_type = ARGV[2] == 'failed_tasks' and 'failed' or nil
local webhook = ended(KEYS[1], KEYS[3], KEYS[4], ARGV[2], per_type, ARGV[6], ARGV[7], ARGV[5], tonumber(ARGV[8]),
  record, lease)
if webhook and lease then return 'leased' end
return 'ok'
