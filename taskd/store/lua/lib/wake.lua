-- lib/wake.lua: wake_one(queue), wakes one idle worker of a queue, or every worker when none is idle.
--
-- A library function: the scripts that include it get it prepended, so it reads no KEYS or ARGV
-- of its own; its caller passes the queue's name.
-- KEYS: none
-- ARGV: none
--   queue  taskd's queue name
--
-- A worker whose last take (take.lua) left it free slots waits in {taskd}:idle:{queue} (worker id ->
-- ms it went idle). The one idle longest is taken off and the queue's name published on its own
-- channel, {taskd}:wake:{worker id}: only that process hears it and looks. Before this, every
-- submit woke every worker, and all but one of them found the job already taken
-- (docs/performance.md). An entry whose worker has no heartbeat ({taskd}:worker:{id}) any more is
-- dropped and the next one tried. With no worker idle, the queue's name goes out on {taskd}:wake,
-- which only the workers that claim one job at a time listen to (a host with GPUs: they never
-- wait in the idle set; taskd.engine.executor.Executor.listen): a worker that takes batches and
-- is not idle was just woken, or is full and looks by itself when a slot frees.
-- The message is the queue's name after the partition's prefix (`{taskd}:default`): the woken worker
-- takes from that partition first (taskd.keys.woken).
-- Returns the woken worker's id, or false when every worker was told.
local function wake_one(queue)
  local idle = '@IDLE_PREFIX@' .. queue
  while true do
    local first = redis.call('ZPOPMIN', idle)
    if #first == 0 then break end
    if redis.call('EXISTS', '@WORKER_PREFIX@' .. first[1]) == 1 then
      redis.call('PUBLISH', '@WAKE@:' .. first[1], P .. queue)
      return first[1]
    end
  end
  redis.call('PUBLISH', '@WAKE@', P .. queue)
  return false
end
