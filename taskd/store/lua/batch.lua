-- batch.lua: admits and stores the tasks of a batch submit, all or nothing, in one round trip.
--
-- Every task is checked first (its dependencies, its project's waiting tasks, its queue's length:
-- lib/admit.lua, as submit.lua checks one), counting the batch's earlier tasks as already stored;
-- only when all pass are they written, in order, so a refusal writes nothing. A task may depend on
-- an earlier task of the batch (the caller has already replaced the index it named by that task's
-- id): it waits for it like for any queued task.
-- With an Idempotency-Key (KEYS[2] not {taskd}:none), the key is checked and remembered in the same step, as
-- in submit.lua: the first request's answer comes back for the same fingerprint, another one is
-- refused, and either way nothing is written; a refused batch remembers nothing.
-- KEYS[1]  metrics         {taskd}:metrics, the shared counters
-- KEYS[2]  idempotency     {taskd}:idempotency:{key id}:{key hash}, the Idempotency-Key's memory; {taskd}:none for none
-- ARGV[1]  ttl             seconds the records, the indexes and the active sets are kept
-- ARGV[2]  queued_limit    the most tasks a project may have waiting (queued); 0 = unlimited
-- ARGV[3]  queue_limit     the most tasks that may wait on a queue; 0 = unlimited
-- ARGV[4]  aging_ms        execution.priority_aging in ms (lib/fair.lua)
-- ARGV[5]  fingerprint     a digest of the request's route and body ('' without an Idempotency-Key)
-- ARGV[6]  idempotency_ttl seconds the Idempotency-Key is remembered
-- ARGV[7]  tasks           a JSON list, in order, of {id, project, queue, task_type, created_ms,
--                          score, job_id, depends_on, scheduled_ms, fields, elsewhere}: what
--                          submit.lua gets as its arguments (fields: name, value, ...)
-- ARGV[8]  stored_limit    the most bytes a project's heavy records may hold (lib/stored.lua); 0 = unlimited
-- ARGV[9]  replay_only     '1': a check of the moment refused the request (taskd.submit.idempotency), so
--                          only a replay may answer it: with the key not remembered, {'not_remembered'}
--                          and nothing is written; '' otherwise
-- The keys of each task (its record, its project's index and sets, its queue's line) are
-- built here from taskd.keys's prefixes, all in the partition of KEYS[1] (docs/cluster.md).
-- Returns {'ok', results}: results a JSON list, in order, of [position, duration_sum,
-- duration_count] (as submit.lua returns them); or {'bad_dependency', index, id, why},
-- {'project_full', index, waiting tasks, of them this batch's}, {'queue_full', index, waiting tasks,
-- of them this batch's}, {'stored_full', index, the bytes the project's heavy records hold, of them
-- this batch's, this task's, the seconds until enough are gone (0: never)}: the 0-based index of the first task refused, and nothing is written; or {'replayed', results, ids, created}
-- (JSON lists: what the key's first request got) or {'idempotency_key_reused'} or {'not_remembered'}
-- (replay_only), and nothing is written either.
-- include lib/admit.lua
local remembered = KEYS[2] ~= '@NO_KEY@'
if remembered then
  local first = redis.call('HMGET', KEYS[2], 'fingerprint', 'results', 'task_ids', 'created_ms')
  if first[1] then
    if first[1] ~= ARGV[5] or not first[2] then return {'idempotency_key_reused'} end
    return {'replayed', first[2], first[3], first[4]}
  end
  if ARGV[9] == '1' then return {'not_remembered'} end
end
local tasks = cjson.decode(ARGV[7])
local queued_limit, queue_limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local pending = {}
local in_project = {}
local on_queue = {}
-- Per project: the bytes of its heavy records and their seconds (lib/stored.lua's stored_total), read
-- once, and the bytes of the batch's heavy tasks checked so far.
local stored_read, stored_ours = {}, {}
local stored_limit = tonumber(ARGV[8])
for index, task in ipairs(tasks) do
  local waiting_for, bad, why = unmet(task.project, task.depends_on, pending)
  if not waiting_for then return {'bad_dependency', index - 1, bad, why} end
  task.waiting_for = waiting_for
  local earlier = in_project[task.project] or 0
  if queued_limit > 0 then
    local waiting = queued(task.project, queued_limit - earlier) + earlier
    if waiting >= queued_limit then return {'project_full', index - 1, waiting, earlier} end
  end
  in_project[task.project] = earlier + 1
  if queue_limit > 0 then
    local ours = on_queue[task.queue] or 0
    local waiting = redis.call('ZCARD', '@WAITING_PREFIX@' .. task.queue) + ours + task.elsewhere
    if waiting >= queue_limit then return {'queue_full', index - 1, waiting, ours} end
  end
  local named = by_name(task.fields)
  if heavy(named, ARGV[1]) then
    task.stored = weight(named)
    if stored_limit > 0 then
      local now_s = tonumber(task.created_ms) / 1000
      if not stored_read[task.project] then stored_read[task.project] = {stored_total(task.project, now_s)} end
      local total, live = unpack(stored_read[task.project])
      local ours = stored_ours[task.project] or 0
      if total + ours + task.stored > stored_limit then
        return {'stored_full', index - 1, total + ours, ours, task.stored,
                stored_wait(total + ours, live, task.stored, stored_limit, now_s) or 0}
      end
      stored_ours[task.project] = ours + task.stored
    end
  end
  if #waiting_for == 0 and (tonumber(task.scheduled_ms) or 0) == 0 then
    on_queue[task.queue] = (on_queue[task.queue] or 0) + 1
  end
  pending[task.id] = task.project
end
local results, ids, created = {}, {}, {}
local later = later_writes(KEYS[1])
local durations_read = {}
for _, task in ipairs(tasks) do
  task.key = '@TASK_PREFIX@' .. task.id
  task.project_key = '@PROJECT_PREFIX@' .. task.project
  task.active_key = '@ACTIVE_PREFIX@' .. task.project
  task.ttl = ARGV[1]
  task.aging_ms = ARGV[4]
  local position = store(task, later)
  local past = durations(KEYS[1], task.task_type, durations_read)
  table.insert(results, {position, past[1] or '0', past[2] or '0'})
  table.insert(ids, task.id)
  table.insert(created, task.created_ms)
end
write_later(later)
local reply = cjson.encode(results)
if remembered then
  redis.call('HSET', KEYS[2], 'fingerprint', ARGV[5], 'results', reply, 'task_ids', cjson.encode(ids),
    'created_ms', cjson.encode(created))
  redis.call('EXPIRE', KEYS[2], ARGV[6])
end
return {'ok', reply}
