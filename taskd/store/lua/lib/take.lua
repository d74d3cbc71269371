-- lib/take.lua: take_jobs(keys_of, worker_id, now, now_ms, count, scan, limit, aging_ms, taken), starts
-- up to `count` due jobs of a queue for one worker: take.lua (a worker's take) and submit.lua (a start
-- for the submitting process's idle worker) share it.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the values it works on.
-- KEYS: none
-- ARGV: none
--   keys_of    the keys it reads and writes: queue (arq's set, {taskd}:queue:{queue}), running
--              ({taskd}:running:{queue}), metrics ({taskd}:metrics) and outbox ({taskd}:webhooks:due),
--              and name, taskd's name of the queue (its {taskd}:heads:{queue})
--   worker_id  the taking worker's id
--   now        now, in seconds, as stored in the record
--   now_ms     now, in ms, as the caller's ARGV has it (a string; compared with the jobs' scores)
--   count      the most jobs to start
--   scan       the most jobs to pass over before giving up
--   limit      limits.concurrent_per_project: the most processing tasks of a project; 0 = no limit
--   aging_ms   execution.priority_aging in ms (where the next head goes: lib/fair.lua)
--   taken      the list the started entries are appended to
--
-- The jobs come in the order of arq's set (due time moved earlier by priority, then projects'
-- turns: lib/fair.lua). A started job leaves the set, and its project's next job becomes the head
-- behind the heads already waiting, so it is taken in the same call only when its turn comes
-- before every other due head: the order one poll after another would give. A head whose project
-- runs `limit` tasks is passed over and goes behind the heads waiting (lib/fair.lua's pass_turn);
-- a job another worker holds is passed over where it is (start.lua's lock: a host with GPUs
-- claims one job at a time); a job whose task no longer waits
-- for it (ended, cancelled, expired, a newer job) is dropped. Each start is lib/begin.lua's; the
-- starts' counters and running and processing sets' entries are written together once the batch
-- is made.
-- Returns started, passed, left: how many jobs it started, how many it passed over, and whether
-- a due job is left that it did not take. Each started entry appended to `taken` is {job_id,
-- score, field, value, ...} (the started record).
-- include lib/record.lua
-- include lib/fair.lua
-- include lib/begin.lua
-- include lib/later.lua
-- include lib/drop_job.lua
local function take_jobs(keys_of, me, now, now_ms, count, scan, limit, aging_ms, taken)
  local line = keys_of.queue
  local written = {running = keys_of.running, metrics = keys_of.metrics, outbox = keys_of.outbox}
  local later = later_writes(written.metrics)
  -- The projects' processing sets' sizes as this call read them: until write_later below, their
  -- only writes are the starts' SADDs that `later` keeps (pending), so each is counted once.
  local counted = {}
  local passed, npassed, started = {}, 0, 0
  local left = false
  -- The due job after the one a turn starts (nil: none), as last read, and the job the next turn
  -- starts when this call knows it without reading the set again (below).
  local runner, runner_score, known, known_score, known_record
  while true do
    local job, score, straight = known, known_score, known_record
    known, known_record = nil, nil
    if not job then
      -- Passed-over jobs stay on the set, in front: read two past them, the next and the runner-up.
      local due = redis.call('ZRANGEBYSCORE', line, '-inf', tonumber(now_ms), 'WITHSCORES', 'LIMIT', 0, npassed + 2)
      runner, runner_score = nil, nil
      for i = 1, #due, 2 do
        if not passed[due[i]] then
          if not job then
            job, score = due[i], due[i + 1]
          elseif not runner then
            runner, runner_score = due[i], tonumber(due[i + 1])
          end
        end
      end
    end
    if not job then break end
    if started >= count or npassed >= scan then
      left = true
      break
    end
    local task_id = string.match(job, '^(.*)%.[^.]*$') or job
    local task_key = '@TASK_PREFIX@' .. task_id
    local record = straight or read_record(task_key)
    if record.status == 'queued' and record.job_id == job then
      local processing = '@PROCESSING_PREFIX@' .. record.project_id
      -- A job started straight from its line had its throttle asked by the start before it.
      if not straight and throttled(record.project_id, limit, pending(later, 'SADD', processing), counted) then
        passed[job], npassed = true, npassed + 1
        pass_turn(line, job, score, record.priority, tonumber(now_ms), aging_ms)
      else
        -- Off arq's set first: nothing else may take it (lib/begin.lua does what start.lua does).
        if not straight then
          redis.call('ZREM', line, job)
          left_arq(job)
        end
        -- The next turn starts the project's next job if it comes first, is due and fits: then it
        -- need not go on the set and off again (lib/fair.lua's seat, `before`).
        local before = nil
        if started + 1 < count and npassed < scan
          and not throttled(record.project_id, limit, pending(later, 'SADD', processing) + 1, counted) then
          before = {below = runner_score or math.huge, room = count - started - 1}
        end
        written.started_state = '@WEBHOOK_PREFIX@' .. task_id .. ':started'
        local _, seated, seated_score, seated_record = begin(task_key, task_id, job, record, me, now, now_ms,
          aging_ms, written, false, later, before)
        taken[#taken + 1] = record_reply({job, score}, record)
        started = started + 1
        -- The project's next job, just seated, is the next due job when it comes before the
        -- runner-up (which this start left where it was): the next turn need not read the set. A
        -- tie is left to the set's own order (by member), read again.
        if seated and seated_score <= tonumber(now_ms) and (not runner or seated_score < runner_score) then
          known, known_score, known_record = seated, string.format('%.17g', seated_score), seated_record
        end
      end
    elseif redis.call('EXISTS', '@IN_PROGRESS_PREFIX@' .. job) == 1 then
      passed[job], npassed = true, npassed + 1
    else
      -- A job that will not run gives its project's turn to the next job in line (start.lua).
      if record.status and record.queue and record.project_id then
        leave_line(task_key, job, tonumber(now_ms), aging_ms, {record.queue, record.project_id})
      else
        -- Its record is gone: its project's next job takes the turn now, not at the next submit.
        orphan_leaves(keys_of.name, job, tonumber(now_ms), aging_ms)
      end
      drop_job(task_key, line, job)
      left_arq(job)
    end
  end
  write_later(later)
  -- The lines' jobs that started have left them: a look ahead would skip as many again.
  forget_ahead()
  return started, npassed, left
end
