-- lib/fair.lua: fair turns between projects on a queue, and the per-project throttle.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its callers pass the task record, and the keys follow from its queue and project.
-- KEYS: none
-- ARGV: none
--
-- arq's sorted set of a queue ({taskd}:queue:{queue}) holds at most one waiting job per project:
-- the project's head ({taskd}:heads:{queue} says which); besides, the running jobs of workers that
-- claim one job at a time (start.lua; take.lua takes a started job off the set). Every waiting job
-- is also in its project's line ({taskd}:project_waiting:{queue}:{project_id}) and in the queue's
-- line ({taskd}:waiting:{queue}), both by the job's own score (its due time moved earlier by its
-- priority, taskd.queue.task_queue.job_score). The head is the first of its project's line; when
-- it starts, the next one goes on arq's set with the score it would get if submitted now (never
-- earlier than its own): behind the heads of the projects already waiting, so projects take
-- turns, each in its own FIFO (by priority) order, and aging still lifts a head that waits long.
--
--   wait_in_line(task_key, job, score, now_ms, aging_ms, record)  puts the task's job in line
--   leave_line(task_key, job, now_ms, aging_ms, where, is_head, before, later)  takes it out (started or
--                                                         cancelled)
--   orphan_leaves(queue, job, now_ms, aging_ms)           the same for a head whose record is gone
--   seat(queue, project, now_ms, aging_ms, known, head, vacated, before)  makes the line's first job the head
--   throttled(project, limit, pending, counted)           whether the project runs `limit` tasks (ids
--                                                         of gone records dropped first, at most once
--                                                         a minute: lib/prune.lua)
--   starts_straight(queue, project, now_ms, limit, pending)  whether a new job of the project would
--                                                         be the next a take starts (below)
--   turn_score(own, now_ms, priority, aging_ms)           a new head's score on arq's set (below)
--   pass_turn(arq_queue, job, score, priority, now_ms, aging_ms)  a throttled head goes behind the
--                                                         heads waiting now (below)
--   place(queue, project, job, now_ms, k)                 a waiting job's queue position (the jobs of
--                                                         other projects due at now_ms counted: a
--                                                         retry waiting for its back-off is not)
--   all_heads(queue)                                      the queue's heads (project -> job), read once
--                                                         a script run (below)
--     task_key  the task's record hash ({taskd}:task:{id}); its queue and project_id name the lines
--     job       the arq job id ({task id}.{n})
--     score     the job's own score, in ms (arq's score had it no turns to wait)
--     now_ms    now, in ms
--     aging_ms  execution.priority_aging, in ms: a priority step moves a job this much earlier
--     limit     limits.concurrent_per_project; 0 = no throttle
--     record    optional: the task's fields by name (queue, project_id, status, job_id, priority),
--               when the caller has just written them; spares reading them back
--     where     optional: {queue, project_id} of the task, when the caller has read them
--     known     optional: a record as above; a job of its job_id needs no read of its task
--     head      optional: the project's head as the caller just read it (false: none)
--     k         optional: the job's 0-based place in its project's line, when the caller has it
--     vacated   optional: true when the head field still names a job that just left the line (and
--               arq's set, or stays there running): the next head's HSET writes over it, and only
--               an emptied line deletes it (one HDEL less a start with more jobs waiting)
--     is_head   optional: true when the caller knows the job is its project's head: it started it
--               from arq's set as the queued task's current job (lib/begin.lua), and only a head is
--               there waiting; spares reading the head field
--     before    optional: a take that will start the line's next job at once if it is due and its
--               score on arq's set comes before `before.below` (the take's next due job of another
--               project; math.huge for none) gives it: seat then leaves the job off arq's set and
--               the head field as it is, and returns its record too, read whole (lib/take.lua);
--               `before.room`, the take's slots left after that job, is how far it reads the line
--               ahead (below) when no other job is due
--     later     optional: lib/later.lua's table of a caller that writes it before anything reads the
--               queue's line ({taskd}:waiting:{queue}): the job leaves that line with the batch's
--               others, in one ZREM (lib/begin.lua), and its project's line too when the take read
--               it ahead (below)
--     pending   optional: the project's starts made in this script whose place in its processing
--               set is still to be written (lib/begin.lua leaves it to lib/later.lua)
--     counted   optional: a table (project -> its processing set's size) the caller keeps while
--               the set is written only through `pending`'s writes (a take, until it writes
--               them): the set is counted once (SCARD), not at every start
--
-- The heads a script run has read: all_heads(queue) reads a queue's heads hash once (HGETALL) and
-- keeps it for the rest of the run, and this file's writes to the hash keep that copy up to date;
-- nothing else writes a heads hash. Read once, the submits of one call (submit.lua, batch.lua) find
-- their project's head, and their positions the other heads, with no command of their own (it was
-- an HGET and an HGETALL a submit). A job's score on arq's set (or that it is not there) is kept
-- the same way, from its first read (a ZSCORE when a submit behind its project's head asks, a
-- ZMSCORE of the heads for a position) or this file's ZADD or ZREM of it, and lib/take.lua's ZREM
-- of a job it starts or drops; and a line's count of due jobs from its first ZCOUNT until this
-- file writes the line (or a take writes its batch). So the submits of one call read the other
-- projects' heads' scores and lines' counts once for all their positions, not once each: with
-- thousands of projects waiting on a queue, those reads were most of a submit's cost, and a call
-- carries up to 64 submits.
-- Returns: seat, leave_line and orphan_leaves whether a job was put on arq's set (a new head: a worker may be
-- woken for it), and if so that job, its score there and, when it was left off for the caller's
-- next start (`before`), its record; wait_in_line the job's 0-based place in its project's line when it went behind
-- the project's head (nothing for a worker to take: no wake-up needed), else nil; throttled a
-- boolean, as starts_straight; place the 1-based position (0 when the job is not waiting).
-- include lib/record.lua
-- include lib/later.lua
-- include lib/prune.lua
local heads_read, arq_score, lengths = {}, {}, {}

local function all_heads(queue)
  local heads = heads_read[queue]
  if not heads then
    heads = {}
    local all = redis.call('HGETALL', '@HEADS_PREFIX@' .. queue)
    for i = 1, #all, 2 do heads[all[i]] = all[i + 1] end
    heads_read[queue] = heads
  end
  return heads
end

-- Whether the queue has few enough projects waiting (heads) for a script run to read them all:
-- at most @EXACT_PLACE_HEADS@. Past that, reading every head (and, for a position, every head's
-- score and every line's length) would cost Redis in proportion to the projects waiting on each
-- submit and each status read of a queued task, with no bound: scheduled tasks and released
-- dependents queue past `limits.max_queue_length`. Counted once a script run (HLEN).
local heads_counted = {}
local function few_heads(queue)
  if heads_read[queue] then return true end
  local count = heads_counted[queue]
  if not count then
    count = redis.call('HLEN', '@HEADS_PREFIX@' .. queue)
    heads_counted[queue] = count
  end
  return count <= @EXACT_PLACE_HEADS@
end

local function head_of(queue, project)
  local heads = heads_read[queue]
  if heads then return heads[project] or false end
  return redis.call('HGET', '@HEADS_PREFIX@' .. queue, project)
end

-- The project's head becomes `job`, or none (false).
local function set_head(queue, project, job)
  if job then
    redis.call('HSET', '@HEADS_PREFIX@' .. queue, project, job)
  else
    redis.call('HDEL', '@HEADS_PREFIX@' .. queue, project)
  end
  local heads = heads_read[queue]
  if heads then heads[project] = job or nil end
end

-- A job's score on arq's set (false: not there), asked once a script run (see above).
local function score_on_arq(queue, job)
  if arq_score[job] == nil then
    arq_score[job] = tonumber(redis.call('ZSCORE', '@QUEUE_PREFIX@' .. queue, job)) or false
  end
  return arq_score[job]
end

-- Whether the job is on arq's set.
local function is_on_arq(queue, job)
  return score_on_arq(queue, job) ~= false
end

-- A job this script took off arq's set outside this file (lib/take.lua).
local function left_arq(job)
  arq_score[job] = false
end

-- How many jobs in a project's line are due at now_ms (a retry waiting for its back-off is not
-- yet: its score is its due time), read once until the line is written (see above), at the first
-- caller's now: a script run's callers are within a few ms of each other.
local function due_in_line(line, now_ms)
  local length = lengths[line]
  if not length then
    length = redis.call('ZCOUNT', line, '-inf', now_ms)
    lengths[line] = length
  end
  return length
end

-- A take's look ahead in a project's line (line -> {entries = {job, score, ...}, next = the index of
-- the line's first job in `entries`, left = the jobs that started from it and leave the line with
-- the take's batch, complete = true when `entries` runs to the line's end}): a take that starts a
-- project's jobs one after another reads their line once, not once a start, and they leave it in
-- one ZREM (lib/later.lua), not one each. Any other write to the line in the same run, or a read
-- past the look, first takes them out (drop_ahead), which also forgets the line's length. The take
-- forgets every look, and every length, once its batch is written (forget_ahead).
local ahead = {}

local function drop_ahead(line)
  local look = ahead[line]
  if look and #look.left > 0 then redis.call('ZREM', line, unpack(look.left)) end
  ahead[line] = nil
  lengths[line] = nil
end

local function forget_ahead()
  ahead = {}
  lengths = {}
end

-- The line's first job and its own score, or nil; `room` > 0: look that many jobs further ahead.
local function first_in_line(line, room)
  local look = ahead[line]
  if look and look.next > #look.entries and not look.complete then
    -- Past what was read (a take reads as far as its slots go, so seldom): read afresh.
    drop_ahead(line)
    look = nil
  end
  if look then
    if look.next > #look.entries then return nil end
    return look.entries[look.next], tonumber(look.entries[look.next + 1])
  end
  local first = redis.call('ZRANGE', line, 0, room, 'WITHSCORES')
  if room > 0 then ahead[line] = {entries = first, next = 1, left = {}, complete = #first < 2 * (room + 1)} end
  if #first == 0 then return nil end
  return first[1], tonumber(first[2])
end

-- A job's score on arq's set when it becomes its project's head at `now_ms`: as if submitted then
-- (its priority moves it `aging_ms` earlier a step), never earlier than its own score `own`.
local function turn_score(own, now_ms, priority, aging_ms)
  local offset = (@PRIORITY_LOW@ - (tonumber(priority) or @PRIORITY_LOW@)) * aging_ms
  return math.max(own, now_ms - offset)
end

-- A head passed over because its project runs its limit of tasks goes where its turn would come
-- now (turn_score from its `score` on `arq_queue`: never earlier), behind the heads waiting: left in
-- front, heads that stay throttled fill a take's scan and a claiming worker's read of arq's set
-- (100 each), and with that many throttled projects ahead no other project's job would start while
-- workers sit idle. Its priority keeps its head start, as a new head's does.
local function pass_turn(arq_queue, job, score, priority, now_ms, aging_ms)
  local later = turn_score(tonumber(score), now_ms, priority, aging_ms)
  if later > tonumber(score) then
    redis.call('ZADD', arq_queue, later, job)
    arq_score[job] = later
  end
end

local function seat(queue, project, now_ms, aging_ms, known, head, vacated, before)
  local line = '@PROJECT_WAITING_PREFIX@' .. queue .. ':' .. project
  local arq_queue = '@QUEUE_PREFIX@' .. queue
  if head == nil then head = head_of(queue, project) end
  -- With no other job due (nothing for the job to wait behind), the job will start straight: its
  -- record is read whole and the line ahead as far as the take's slots go. With one, it seldom
  -- does (another project's head is first, as projects take turns): three fields, one job.
  local alone = before and before.below == math.huge
  while true do
    local job, own = first_in_line(line, alone and before.room or 0)
    if not job then
      if head then
        redis.call('ZREM', arq_queue, head)
        arq_score[head] = false
        set_head(queue, project, false)
      elseif vacated then
        set_head(queue, project, false)
      end
      return false
    end
    local task_key = '@TASK_PREFIX@' .. string.match(job, '^(.*)%.[^.]*$')
    local fields, record
    if known and known.job_id == job then
      fields = {known.status, known.job_id, known.priority}
    elseif alone then
      record = read_record(task_key)
      fields = {record.status, record.job_id, record.priority}
    else
      fields = redis.call('HMGET', task_key, 'status', 'job_id', 'priority')
    end
    if fields[1] == 'queued' and fields[2] == job then
      if job == head and redis.call('ZSCORE', arq_queue, job) then return false end
      if head and head ~= job then
        redis.call('ZREM', arq_queue, head)
        arq_score[head] = false
      end
      local score = turn_score(own, now_ms, fields[3], aging_ms)
      if before and score <= now_ms and score < before.below then
        -- The caller's next turn starts it (lib/take.lua): it never waits on arq's set, and the
        -- head field is written by the seat that ends the caller's run of starts.
        return true, job, score, record or read_record(task_key)
      end
      redis.call('ZADD', arq_queue, score, job)
      -- Valkey (and Redis 7) write a Lua number with 17 digits: the score read back is this one.
      arq_score[job] = score
      set_head(queue, project, job)
      return true, job, score
    end
    -- Its task ended, expired or has a newer job: it no longer waits (a cancel takes its job out
    -- itself; this is for a record that expired while queued).
    drop_ahead(line)
    redis.call('ZREM', line, job)
    redis.call('ZREM', '@WAITING_PREFIX@' .. queue, job)
  end
end

local function wait_in_line(task_key, job, score, now_ms, aging_ms, record)
  local where
  if record then
    where = {record.queue, record.project_id}
  else
    where = redis.call('HMGET', task_key, 'queue', 'project_id')
  end
  local line = '@PROJECT_WAITING_PREFIX@' .. where[1] .. ':' .. where[2]
  drop_ahead(line)
  redis.call('ZADD', line, score, job)
  redis.call('ZADD', '@WAITING_PREFIX@' .. where[1], score, job)
  local head = head_of(where[1], where[2])
  if head and head ~= job and is_on_arq(where[1], head) then
    -- Behind a head that is on arq's set, the line's first job is the same as before: the head
    -- stays as it is (one whose task no longer waits is dropped when a take reaches it,
    -- lib/take.lua). A head gone from arq's set (a take dropped it: its record had expired) is
    -- replaced by seat() below, which also drops the line's jobs whose tasks no longer wait.
    local rank = redis.call('ZRANK', line, job)
    if rank and rank > 0 then return rank end
  end
  seat(where[1], where[2], now_ms, aging_ms, record, head)
end

local function leave_line(task_key, job, now_ms, aging_ms, where, is_head, before, later)
  where = where or redis.call('HMGET', task_key, 'queue', 'project_id')
  local line = '@PROJECT_WAITING_PREFIX@' .. where[1] .. ':' .. where[2]
  local look = ahead[line]
  if later and look and look.entries[look.next] == job then
    look.next = look.next + 2
    look.left[#look.left + 1] = job
    add_to(later, 'ZREM', line, job)
    lengths[line] = nil
  else
    drop_ahead(line)
    redis.call('ZREM', line, job)
  end
  if later then
    add_to(later, 'ZREM', '@WAITING_PREFIX@' .. where[1], job)
  else
    redis.call('ZREM', '@WAITING_PREFIX@' .. where[1], job)
  end
  -- A started head stays on arq's set (arq lists a running job until it is dropped).
  local head = not is_head and head_of(where[1], where[2])
  local vacated = is_head or head == job
  if vacated then head = false end
  return seat(where[1], where[2], now_ms, aging_ms, nil, head, vacated, before)
end

local function orphan_leaves(queue, job, now_ms, aging_ms)
  -- Its record is gone (it expired while the job waited), so its project is unknown but for the
  -- head field that still names the job: that project's next job takes the turn.
  for project, head in pairs(all_heads(queue)) do
    if head == job then return leave_line(nil, job, now_ms, aging_ms, {queue, project}, true) end
  end
  return false
end

local function throttled(project, limit, pending, counted)
  if limit <= 0 then return false end
  pending = pending or 0
  local processing = '@PROCESSING_PREFIX@' .. project
  local running = counted and counted[project]
  if running == nil then
    running = redis.call('SCARD', processing)
    if counted then counted[project] = running end
  end
  if running + pending < limit then return false end
  -- Only at the limit, and once a minute: a record gone while processing must not hold a place
  -- for ever (lib/prune.lua).
  if not prune_due('@PROCESSING_PRUNED_PREFIX@' .. project) then return true end
  for _, id in ipairs(redis.call('SMEMBERS', processing)) do
    if redis.call('HGET', '@TASK_PREFIX@' .. id, 'status') ~= 'processing' then
      redis.call('SREM', processing, id)
    end
  end
  running = redis.call('SCARD', processing)
  if counted then counted[project] = running end
  return running + pending >= limit
end

-- Whether a new job of `project`, due now, would be the very next one a take of the queue starts:
-- arq's set holds no job due at `now_ms` (every project's due head is there, its own included), and
-- the project is under `limit` with `pending` starts not yet in its processing set. Jobs of its
-- project that are not due yet (a retry's back-off) would go behind it in its line, so a take would
-- start it all the same. A caller that starts it at once (submit.lua, for its process's idle worker)
-- then need not put it in line, on arq's set and as its project's head, to take it off all three in
-- the same call.
local function starts_straight(queue, project, now_ms, limit, pending)
  if #redis.call('ZRANGEBYSCORE', '@QUEUE_PREFIX@' .. queue, '-inf', now_ms, 'LIMIT', 0, 1) > 0 then return false end
  return not throttled(project, limit, pending)
end

-- Under round-robin, before the k-th job of a project (k counted from 0) start its project's k
-- earlier jobs, k jobs of every other project (or all it has, if fewer), and one more of each
-- project whose head is ahead of this project's head and that has more than k waiting. Exact
-- while every project keeps its turn; a throttled project's turns are counted though they wait.
-- The heads' scores come in one ZMSCORE (one per HEADS_A_READ heads), and a head (k = 0) needs
-- no other line's length (a project with a head has a job waiting): a submit or a status read is
-- not two commands dearer for every project waiting on the queue (it was a ZCARD and a ZSCORE
-- each); a later job reads each other line's length once. Both are read once a script run (see
-- above): the other submits of the call count the heads in Lua alone.
local HEADS_A_READ = 1000  -- ZMSCORE's arguments per call: Lua's unpack() takes at most ~8000
-- Whether this run has every head of the queue's score (arq_score): read at its first position;
-- a head set later in the run comes with its score (seat's ZADD).
local scored = {}
-- With more than @EXACT_PLACE_HEADS@ projects waiting (few_heads), a position is counted from
-- sizes, in a few commands however many wait: a head, by the heads before it on arq's set (a
-- ZCOUNT: exact but for a running job there of a worker that claims one at a time); a later job,
-- by its k earlier jobs and k jobs of every other project, or all the other projects' waiting jobs
-- if fewer (exact when no other project has more than k waiting, or all have at least k; the
-- heads ahead with more than k waiting are not counted).
local function estimated_place(queue, project, line, k, now_ms)
  local head = head_of(queue, project)
  local mine = head and score_on_arq(queue, head)
  local heads = heads_counted[queue]
  if k == 0 and mine then
    return redis.call('ZCOUNT', '@QUEUE_PREFIX@' .. queue, '-inf', '(' .. string.format('%.17g', mine)) + 1
  end
  local others = heads - (head and 1 or 0)
  local due = redis.call('ZCOUNT', '@WAITING_PREFIX@' .. queue, '-inf', now_ms)
  local waiting = due - due_in_line(line, now_ms)
  return k + math.min(math.max(waiting, 0), k * others) + 1
end

local function place(queue, project, job, now_ms, k)
  local line = '@PROJECT_WAITING_PREFIX@' .. queue .. ':' .. project
  k = k or redis.call('ZRANK', line, job)
  if not k then return 0 end
  if not few_heads(queue) then return estimated_place(queue, project, line, k, now_ms) end
  local heads = all_heads(queue)
  local first = next(heads)
  if first == project and next(heads, first) == nil then return k + 1 end
  if not scored[queue] then
    local unknown = {}
    for _, head in pairs(heads) do
      if arq_score[head] == nil then unknown[#unknown + 1] = head end
    end
    for at = 1, #unknown, HEADS_A_READ do
      local last = math.min(at + HEADS_A_READ - 1, #unknown)
      local read = redis.call('ZMSCORE', '@QUEUE_PREFIX@' .. queue, unpack(unknown, at, last))
      for i = 1, #read do arq_score[unknown[at + i - 1]] = tonumber(read[i]) or false end
    end
    scored[queue] = true
  end
  local mine = heads[project] and score_on_arq(queue, heads[project])
  -- One pass over the heads, with no command once they are read: with thousands of projects
  -- waiting, this loop is what a position costs.
  local ahead = k
  for other, head in pairs(heads) do
    if other ~= project then
      local waiting = 1
      if k > 0 then
        waiting = due_in_line('@PROJECT_WAITING_PREFIX@' .. queue .. ':' .. other, now_ms)
        ahead = ahead + math.min(waiting, k)
      end
      if waiting > k then
        local score = arq_score[head]
        if score == nil then score = score_on_arq(queue, head) end
        if not mine or (score and score < mine) then ahead = ahead + 1 end
      end
    end
  end
  return ahead + 1
end
