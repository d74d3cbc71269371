-- acquire.lua: takes slots of the best device on this host for a task, if one has room.
--
-- KEYS: none (the device hashes are named from ARGV, one per device of the host; taskd runs on a
-- standalone Redis or a Sentinel-managed one, where a script may touch keys it was not given).
-- ARGV[1]  worker_prefix  taskd:worker:, the liveness key of a holder's worker is this + its id
-- ARGV[2]  device_prefix  taskd:gpu:{host}:, a device's holders hash is this + its index
-- ARGV[3]  task_id        the task taking the slots
-- ARGV[4]  worker_id      the worker running it
-- ARGV[5]  wanted         slots wanted (0 = the whole device)
-- ARGV[6]  capacity       slots per device
-- ARGV[7..] devices       pairs of (device index, free memory in bytes)
-- Holders whose worker stopped beating are dropped on the way (their slots come back). The
-- device with the most free slots wins, then the one with the most free memory.
-- Returns the chosen device's index, or -1 when none has room.
local best, best_free, best_memory = -1, -1, -1
for i = 7, #ARGV, 2 do
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
  local wanted = tonumber(ARGV[5])
  local fits = (wanted == 0 and used == 0) or (wanted > 0 and free >= wanted)
  local memory = tonumber(ARGV[i + 1])
  if fits and (free > best_free or (free == best_free and memory > best_memory)) then
    best, best_free, best_memory = tonumber(ARGV[i]), free, memory
  end
end
if best >= 0 then
  local taken = tonumber(ARGV[5])
  if taken == 0 then taken = tonumber(ARGV[6]) end
  redis.call('HSET', ARGV[2] .. best, ARGV[3], ARGV[4] .. '|' .. taken)
end
return best
