-- lib/begin.lua: begin(task_key, task_id, job_id, record, worker_id, now, now_ms, aging_ms, keys_of,
-- claimed, later, before, outside), what every start of a queued task does: start.lua (one claimed
-- job), take.lua (a worker's batch) and submit.lua (a new task started straight for its process's
-- idle worker).
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the keys and values it works on.
-- KEYS: none
-- ARGV: none
--   task_key   the task's record hash ({taskd}:task:{id})
--   task_id    the task's id
--   job_id     the arq job being started ({task id}.{n}, the record's job_id)
--   record     the record's fields by name, as the caller read them with HGETALL; updated here to
--              the started record
--   worker_id  the starting worker's id
--   now        now, in seconds, as stored in the record
--   now_ms     now, in ms, as the caller's ARGV has it (a string)
--   aging_ms   execution.priority_aging in ms (where the project's next head goes: lib/fair.lua)
--   keys_of    the keys it writes: running ({taskd}:running:{queue}), metrics ({taskd}:metrics),
--              outbox ({taskd}:webhooks:due) and started_state ({taskd}:webhook:{id}:started)
--   claimed    true when the job was claimed with arq's lock and stays on arq's set while it runs
--              (start.lua); false when a take took it off the set, with no lock (take.lua). The
--              record keeps it (`claimed` '1' or '0'), so the end knows whether there is a lock and
--              a place on the set to drop (finish.lua)
--   later      lib/later.lua's table (later_writes(metrics)): the wait-time counts and the running
--              and processing sets' entries of the script's starts, which the caller writes once they
--              are all made (write_later): one HINCRBYFLOAT and one HINCRBY per counter, one ZADD and
--              one SADD a project for a take's batch, however many it started (was three counter
--              writes, a ZADD and an SADD a start). Nothing a start does reads them but the throttle,
--              which counts the starts not yet in the processing set (lib/fair.lua's `pending`);
--              and the started jobs leave the queue's line ({taskd}:waiting:{queue}) in one ZREM.
--   before     optional: lib/fair.lua's seat's `before`, from a take that starts the project's next
--              job at once when it comes first
--   outside    optional: true when the job never went in its project's line (submit.lua's start of
--              a task lib/fair.lua's starts_straight let through): there is no line to leave and no
--              next job to seat
--
-- Marks the task processing (attempt counted, current_step and next_retry_at cleared), counts how
-- long it waited in `wait_sum:`, `wait_count:` and one `wait_in:` bucket per queue and type (from
-- when it could start: its job's enqueue time, the record's `enqueued_ms`, or a retry's
-- next_retry_at when later, to now; a job queued by a version without `enqueued_ms` is not
-- counted), adds it to the queue's running set and its project's processing set
-- ({taskd}:project_processing:{project_id}, the throttle), takes its job out of its project's line
-- (the next one becomes the head: lib/fair.lua), makes its `started` webhook due when its
-- webhook_events ask for one (its delivery state keeps this run's `run` and `run_started_at`, as
-- long as the record is kept), and emits the `processing` event.
-- Returns whether the project's next job was put on arq's set as its new head, and if so that job,
-- its score there and, when it was left off the set for the caller's next start, its record
-- (`before`: lib/fair.lua's seat).
-- include lib/emit.lua
-- include lib/webhook_event.lua
-- include lib/fair.lua
-- include lib/later.lua

local function begin(task_key, task_id, job_id, record, worker_id, now, now_ms, aging_ms, keys_of, claimed, later,
                     before, outside)
  if not record.retries then
    -- A record of a version that did not count its retries: the runs it made before this start are
    -- taken for retries, as that version bounded them (which of them were cut short, it did not
    -- keep); from here on they are counted (requeue.lua), so a later run cut short spends none.
    record.retries = record.attempt or '0'
    redis.call('HSET', task_key, 'retries', record.retries)
  end
  local attempt = tostring((tonumber(record.attempt) or 0) + 1)
  -- A retry could start no earlier than this (its back-off is not waiting); read before it is cleared.
  local retry_ms = (tonumber(record.next_retry_at) or 0) * 1000
  local held = claimed and '1' or '0'
  redis.call('HSET', task_key, 'status', 'processing', 'started_at', now, 'updated_at', now,
             'worker_id', worker_id, 'progress', '0.0', 'attempt', attempt, 'claimed', held)
  if record.current_step or record.next_retry_at then
    redis.call('HDEL', task_key, 'current_step', 'next_retry_at')
  end
  record.status, record.started_at, record.updated_at = 'processing', now, now
  record.worker_id, record.progress, record.attempt, record.claimed = worker_id, '0.0', attempt, held
  record.current_step, record.next_retry_at = nil, nil
  local enqueued_ms = tonumber(record.enqueued_ms)
  if enqueued_ms then
    local ready_ms = math.max(enqueued_ms, retry_ms)
    local waited = math.max(0, tonumber(now_ms) - ready_ms) / 1000
    local series = record.queue .. ':' .. record.task_type
    count(later, 'wait_sum:' .. series, waited, true)
    count(later, 'wait_count:' .. series, 1)
    count_in_bucket(later, 'wait_in:' .. series .. ':', waited, {@WAIT_BUCKETS@})
  end
  add_to(later, 'ZADD', keys_of.running, math.floor(tonumber(now) * 1000), task_id)
  add_to(later, 'SADD', '@PROCESSING_PREFIX@' .. record.project_id, task_id)
  -- Started from arq's set as the task's current job: its project's head (lib/fair.lua).
  local seated, next_job, next_score, next_record = false, nil, nil, nil
  if not outside then
    seated, next_job, next_score, next_record = leave_line(task_key, job_id, tonumber(now_ms), aging_ms,
      {record.queue, record.project_id}, true, before, later)
  end
  if wants_webhook_record(record, 'started') then
    queue_webhook(keys_of.outbox, keys_of.started_state, task_id .. ':started', now_ms)
    -- The run the webhook reports, kept with its delivery (claim.lua hands it to the sender): a
    -- retry of it after the task went back to `queued` (a transient error: its started_at cleared)
    -- must still say this run's attempt and start. A next run replaces it, as it replaces the member.
    redis.call('HSET', keys_of.started_state, 'run', attempt, 'run_started_at', now)
    local kept = redis.call('TTL', task_key)
    if kept > 0 then redis.call('EXPIRE', keys_of.started_state, kept) end
  end
  -- The streams' expiry stays: the queued event set it, the next event sets it again (lib/emit.lua).
  emit_record(record, 'status', true)
  return seated, next_job, next_score, next_record
end
