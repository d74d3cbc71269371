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
--   leave_line(task_key, job, now_ms, aging_ms, where)    takes it out (started or cancelled)
--   orphan_leaves(queue, job, now_ms, aging_ms)           the same for a head whose record is gone
--   seat(queue, project, now_ms, aging_ms, known, head, vacated)  makes the line's first job the head
--   throttled(project, limit)                             whether the project runs `limit` tasks
--   place(queue, project, job, k)                         a waiting job's queue position
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
-- Returns: seat, leave_line and orphan_leaves whether a job was put on arq's set (a new head: a worker may be
-- woken for it); wait_in_line the job's 0-based place in its project's line when it went behind
-- the project's head (nothing for a worker to take: no wake-up needed), else nil; throttled a
-- boolean; place the 1-based position (0 when the job is not waiting).
local function seat(queue, project, now_ms, aging_ms, known, head, vacated)
  local line = '@PROJECT_WAITING_PREFIX@' .. queue .. ':' .. project
  local arq_queue = '@QUEUE_PREFIX@' .. queue
  local heads = '@HEADS_PREFIX@' .. queue
  if head == nil then head = redis.call('HGET', heads, project) end
  while true do
    local first = redis.call('ZRANGE', line, 0, 0, 'WITHSCORES')
    if #first == 0 then
      if head then
        redis.call('ZREM', arq_queue, head)
        redis.call('HDEL', heads, project)
      elseif vacated then
        redis.call('HDEL', heads, project)
      end
      return false
    end
    local job, own = first[1], tonumber(first[2])
    local task_key = '@TASK_PREFIX@' .. string.match(job, '^(.*)%.[^.]*$')
    local fields
    if known and known.job_id == job then
      fields = {known.status, known.job_id, known.priority}
    else
      fields = redis.call('HMGET', task_key, 'status', 'job_id', 'priority')
    end
    if fields[1] == 'queued' and fields[2] == job then
      if job == head and redis.call('ZSCORE', arq_queue, job) then return false end
      if head and head ~= job then redis.call('ZREM', arq_queue, head) end
      local offset = (@PRIORITY_LOW@ - (tonumber(fields[3]) or @PRIORITY_LOW@)) * aging_ms
      redis.call('ZADD', arq_queue, math.max(own, now_ms - offset), job)
      redis.call('HSET', heads, project, job)
      return true
    end
    -- Its task ended, expired or has a newer job: it no longer waits (a cancel takes its job out
    -- itself; this is for a record that expired while queued).
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
  redis.call('ZADD', line, score, job)
  redis.call('ZADD', '@WAITING_PREFIX@' .. where[1], score, job)
  local head = redis.call('HGET', '@HEADS_PREFIX@' .. where[1], where[2])
  if head and head ~= job and redis.call('ZSCORE', '@QUEUE_PREFIX@' .. where[1], head) then
    -- Behind a head that is on arq's set, the line's first job is the same as before: the head
    -- stays as it is (one whose task no longer waits is dropped when a take reaches it,
    -- lib/take.lua). A head gone from arq's set (a take dropped it: its record had expired) is
    -- replaced by seat() below, which also drops the line's jobs whose tasks no longer wait.
    local rank = redis.call('ZRANK', line, job)
    if rank and rank > 0 then return rank end
  end
  seat(where[1], where[2], now_ms, aging_ms, record, head)
end

local function leave_line(task_key, job, now_ms, aging_ms, where)
  where = where or redis.call('HMGET', task_key, 'queue', 'project_id')
  redis.call('ZREM', '@PROJECT_WAITING_PREFIX@' .. where[1] .. ':' .. where[2], job)
  redis.call('ZREM', '@WAITING_PREFIX@' .. where[1], job)
  local heads = '@HEADS_PREFIX@' .. where[1]
  -- A started head stays on arq's set (arq lists a running job until it is dropped).
  local head = redis.call('HGET', heads, where[2])
  local vacated = head == job
  if vacated then head = false end
  return seat(where[1], where[2], now_ms, aging_ms, nil, head, vacated)
end

local function orphan_leaves(queue, job, now_ms, aging_ms)
  -- Its record is gone (it expired while the job waited), so its project is unknown but for the
  -- head field that still names the job: that project's next job takes the turn.
  local heads = redis.call('HGETALL', '@HEADS_PREFIX@' .. queue)
  for i = 1, #heads, 2 do
    if heads[i + 1] == job then return leave_line(nil, job, now_ms, aging_ms, {queue, heads[i]}) end
  end
  return false
end

local function throttled(project, limit)
  if limit <= 0 then return false end
  local processing = '@PROCESSING_PREFIX@' .. project
  if redis.call('SCARD', processing) < limit then return false end
  -- Only at the limit: a record that expired while processing must not hold a place for ever.
  for _, id in ipairs(redis.call('SMEMBERS', processing)) do
    if redis.call('HGET', '@TASK_PREFIX@' .. id, 'status') ~= 'processing' then
      redis.call('SREM', processing, id)
    end
  end
  return redis.call('SCARD', processing) >= limit
end

-- Under round-robin, before the k-th job of a project (k counted from 0) start its project's k
-- earlier jobs, k jobs of every other project (or all it has, if fewer), and one more of each
-- project whose head is ahead of this project's head and that has more than k waiting. Exact
-- while every project keeps its turn; a throttled project's turns are counted though they wait.
-- The heads' scores come in one ZMSCORE (one per HEADS_A_READ heads), and a head (k = 0) needs
-- no other line's length (a project with a head has a job waiting): a submit or a status read is
-- not two commands dearer for every project waiting on the queue (it was a ZCARD and a ZSCORE
-- each); a later job reads each other line's length once.
local HEADS_A_READ = 1000  -- ZMSCORE's arguments per call: Lua's unpack() takes at most ~8000
local function place(queue, project, job, k)
  local line = '@PROJECT_WAITING_PREFIX@' .. queue .. ':' .. project
  k = k or redis.call('ZRANK', line, job)
  if not k then return 0 end
  local heads = redis.call('HGETALL', '@HEADS_PREFIX@' .. queue)
  if #heads == 2 and heads[1] == project then return k + 1 end
  local jobs, mine_at = {}, nil
  for i = 1, #heads, 2 do
    jobs[#jobs + 1] = heads[i + 1]
    if heads[i] == project then mine_at = #jobs end
  end
  local scores = {}
  for first = 1, #jobs, HEADS_A_READ do
    local last = math.min(first + HEADS_A_READ - 1, #jobs)
    local read = redis.call('ZMSCORE', '@QUEUE_PREFIX@' .. queue, unpack(jobs, first, last))
    for i = 1, #read do scores[first + i - 1] = tonumber(read[i]) end
  end
  local mine = mine_at and scores[mine_at]
  local ahead = k
  for i = 1, #heads, 2 do
    if heads[i] ~= project then
      local waiting = 1
      if k > 0 then
        waiting = redis.call('ZCARD', '@PROJECT_WAITING_PREFIX@' .. queue .. ':' .. heads[i])
        ahead = ahead + math.min(waiting, k)
      end
      if waiting > k then
        local score = scores[(i + 1) / 2]
        if mine == nil or (score and score < mine) then ahead = ahead + 1 end
      end
    end
  end
  return ahead + 1
end
