-- acquire.lua: takes slots of the best device on this host for a task, if one has room.
--
-- KEYS: none (the device hashes are named from ARGV, one per device of the host; every key taskd
-- uses is in the slot of the hash tag {taskd}, which a cluster lets a script touch undeclared:
-- docs/cluster.md).
-- ARGV[1]  worker_prefix  {taskd}:worker:, the liveness key of a holder's worker is this + its id
-- ARGV[2]  device_prefix  {taskd}:gpu:{host}:, a device's holders hash is this + its index, and
--                         this + 'reserved' the host's reservation ('task|device|until ms|score')
-- ARGV[3]  task_id        the task taking the slots
-- ARGV[4]  worker_id      the worker running it
-- ARGV[5]  wanted         slots wanted (0 = the whole device)
-- ARGV[6]  capacity       slots per device
-- ARGV[7]  reserve_ms     how long a reservation lasts after the last try of its task
-- ARGV[8]  score          the task's place in the queues (its job's score, ms): lower goes first
-- ARGV[9..] devices       pairs of (device index, free memory in bytes)
-- Holders whose worker stopped beating are dropped on the way (their slots come back). The
-- device with the most free slots wins, then the one with the most free memory.
-- A task wanting more than one slot (or the whole device) that finds no room reserves the device
-- that should free first (the fewest slots in use, then the most memory) unless a task ahead of it
-- (a lower score) holds the reservation: no task behind the reserving one starts on that device
-- until it has it (or stops asking for reserve_ms), so the one-slot jobs behind it cannot keep it
-- waiting for ever, and the tasks ahead of it are not held up by it. (A one-slot task needs no
-- reservation: any slot that frees fits it, and the tasks ahead of it ask first.)
-- Returns the chosen device's index, or -1 when none has room.
-- Nothing written while its slot migrates (lib/stable_slot.lua): it declares no key to check it on.
stable_slot(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local reserved_key = ARGV[2] .. 'reserved'
local score = tonumber(ARGV[8])
local reserver, reserved_device, reserver_score = nil, nil, nil
local reservation = redis.call('GET', reserved_key)
if reservation then
  local task, device, till, place = string.match(reservation, '^(.*)|(%d+)|(%d+)|(%-?%d+)$')
  if task and tonumber(till) >= now then reserver, reserved_device, reserver_score = task, device, tonumber(place) end
end
-- The reservation binds only the tasks behind the one that holds it.
local bound = reserver ~= nil and reserver ~= ARGV[3] and score >= reserver_score
local wanted = tonumber(ARGV[5])
local best, best_free, best_memory = -1, -1, -1
local drain, drain_used, drain_memory = -1, math.huge, -1
for i = 9, #ARGV, 2 do
  local key = ARGV[2] .. ARGV[i]
  local used = 0
  local holders = redis.call('HGETALL', key)
  for j = 1, #holders, 2 do
    local worker, slots = string.match(holders[j + 1], '^(.*)|(%d+)$')
    if redis.call('EXISTS', ARGV[1] .. worker) == 0 then
      redis.call('HDEL', key, holders[j])
    else
      used = used + tonumber(slots)
    end
  end
  local free = tonumber(ARGV[6]) - used
  local fits = (wanted == 0 and used == 0) or (wanted > 0 and free >= wanted)
  local memory = tonumber(ARGV[i + 1])
  local kept_for_another = bound and reserved_device == ARGV[i]
  if fits and not kept_for_another and (free > best_free or (free == best_free and memory > best_memory)) then
    best, best_free, best_memory = tonumber(ARGV[i]), free, memory
  end
  if used < drain_used or (used == drain_used and memory > drain_memory) then
    drain, drain_used, drain_memory = tonumber(ARGV[i]), used, memory
  end
end
if best >= 0 then
  local taken = wanted
  if taken == 0 then taken = tonumber(ARGV[6]) end
  local key = ARGV[2] .. best
  redis.call('HSET', key, ARGV[3], ARGV[4] .. '|' .. taken)
  -- A hash made here has no expiry until the host's next beat renews it (taskd/gpu/hosts.py): a
  -- host killed before then would keep it for ever. It lives as long as the taking worker's
  -- liveness key, past which its holder counts for nothing anyway (the beat renews both).
  if redis.call('PTTL', key) == -1 then
    local alive_ms = redis.call('PTTL', ARGV[1] .. ARGV[4])
    if alive_ms > 0 then redis.call('PEXPIRE', key, alive_ms) end
  end
  if reserver == ARGV[3] then redis.call('DEL', reserved_key) end
elseif wanted ~= 1 and drain >= 0 and not bound then
  -- Kept for this task while it keeps asking (taken over by a task ahead of the holder); the
  -- device it reserved first stays its choice.
  local device = drain
  if reserver == ARGV[3] then device = tonumber(reserved_device) end
  -- It expires when it would lapse anyway: a task that stops asking (cancelled, timed out, its host
  -- gone) must not leave the key behind for ever.
  redis.call('SET', reserved_key, ARGV[3] .. '|' .. device .. '|' .. (now + tonumber(ARGV[7])) .. '|' .. score,
             'PX', ARGV[7])
end
return best
