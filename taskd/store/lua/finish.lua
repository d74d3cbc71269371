-- finish.lua: ends processing tasks as completed or failed, each if the calling worker still runs it
-- under the same job.
--
-- Drops the task's arq job (a claimed one's lock and place on arq's set), writes its end, counts it
-- (a completed task's duration also feeds the per-type sum, count and histogram bucket), and,
-- through ended(), frees its project slot, makes its webhook due and emits the event. A task
-- cancelled or taken over meanwhile is left as it is, and so is one started again since under a newer
-- job, even by the calling worker (queued again while this run went on, as when the worker's
-- heartbeat lapsed): that newer run's end is the task's, and the worker runs it once this end is
-- refused (taskd.engine.executor, Executor._run).
-- With a `webhook_lease`, the end's webhook goes into the outbox already leased to the calling
-- worker's own sender, which POSTs it as soon as this returns: no claim, no wake-up in between. It
-- is in the outbox all the same, so if that process dies before the POST is recorded, the lease
-- runs out and another sender makes the attempt. A task ends once, so this delivery has made no
-- attempt yet.
-- The ends of the runs that end at once (a worker's batch from one take) come in one call: each
-- end is checked, written and counted as it would be alone, and its own reply (or error) comes back;
-- the counters, the running set, the project sets and the project stream's expiry are written once
-- for all of them (lib/later.lua): eight ends of one project's no-op tasks run 57 commands, not 120
-- (and the slot's guard, lib/stable_slot.lua, once).
-- KEYS[1]  metrics    {taskd}:metrics, the shared counters
-- KEYS[2]  outbox     {taskd}:webhooks:due, the webhook outbox
-- ARGV[1]  ttl        seconds a record is kept from now
-- ARGV[2]  aging_ms   execution.priority_aging in ms (lib/fair.lua), for the dependents it queues
-- ARGV[3..] ends      the ends, one after another, each in ENDS_AT_START values and then its fields:
--                     task_id, queue (the task's; its running set and arq's set of it), worker_id
--                     (the calling worker's), job_id (the arq job of the run that ended), counter ('completed_tasks' or 'failed_tasks'),
--                     task_type (for the per-type counters), duration (seconds the run took),
--                     now_ms (when its webhook is due), webhook_lease (the ms until which the
--                     caller's webhook sender holds the end's webhook, or '': due now, every
--                     sender woken), n (how many values follow), then the n values of the fields
--                     to write: name, value, name, value, ...
-- Returns one reply per end, in order: 'leased' when ended here with its webhook queued under the
-- caller's lease, 'ok' when ended here otherwise; else the task's status (false if the record is
-- gone); or {'error', message} when its end raised an error (what it wrote before stays, as it
-- would in a script of its own; the other ends are not affected).
-- include lib/emit.lua
-- include lib/drop_job.lua
-- include lib/ended.lua
-- include lib/record.lua
-- include lib/later.lua
local ENDS_AT_START = 10
local ttl, aging_ms = ARGV[1], tonumber(ARGV[2])
local later = later_writes(KEYS[1])

local function finish(at, n)
  local task_id, queue, worker_id, job_id = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local counter, task_type, duration = ARGV[at + 4], ARGV[at + 5], ARGV[at + 6]
  local now_ms, lease = ARGV[at + 7], ARGV[at + 8]
  local task_key = '@TASK_PREFIX@' .. task_id
  -- The record once: the check here and what ended() does come from it, with the end written in.
  local record = read_record(task_key)
  if record.status ~= 'processing' or record.worker_id ~= worker_id or record.job_id ~= job_id then
    return record.status or false
  end
  -- A job a take started left arq's set then and has no lock (`claimed` '0', lib/begin.lua): nothing
  -- to drop. A claimed one, or one started by a version before that field, is dropped.
  if record.claimed ~= '0' then drop_job(task_key, '@QUEUE_PREFIX@' .. queue, record.job_id or false) end
  local first, last = at + ENDS_AT_START, at + ENDS_AT_START + n - 1
  if n > 0 then redis.call('HSET', task_key, unpack(ARGV, first, last)) end
  for i = first, last, 2 do record[ARGV[i]] = ARGV[i + 1] end
  add_to(later, 'ZREM', '@RUNNING_PREFIX@' .. queue, task_id)
  if counter == 'completed_tasks' then
    local d = tonumber(duration)
    count(later, 'duration_sum:' .. task_type, d, true)
    count(later, 'duration_count:' .. task_type, 1)
    -- One count, in the first bucket the duration fits; the scrape adds them up into
    -- Prometheus's cumulative buckets (taskd.http.prom).
    count_in_bucket(later, 'duration_in:' .. task_type .. ':', d, {@DURATION_BUCKETS@})
  end
  local per_type = counter == 'failed_tasks' and 'failed' or nil
  if lease == '' then lease = nil end
  local webhook = ended(task_key, KEYS[1], KEYS[2], counter, per_type, task_id, now_ms, ttl, aging_ms, record,
    lease, later)
  if webhook and lease then return 'leased' end
  return 'ok'
end

local replies = {}
local at = 3
while at <= #ARGV do
  local n = tonumber(ARGV[at + ENDS_AT_START - 1])
  local ok, reply = pcall(finish, at, n)
  if not ok then
    -- A command's error comes as a table with its message in `err`.
    reply = {'error', type(reply) == 'table' and reply.err or tostring(reply)}
  end
  replies[#replies + 1] = reply
  at = at + ENDS_AT_START + n
end
write_later(later)
return replies
