-- waiting_heads.lua: the scores of the first due jobs on a queue's arq set that wait to start (its
-- projects' heads, lib/fair.lua), for a take over several partitions (TaskStore.take).
--
-- The jobs running on workers that claim one job at a time (a host with GPUs, start.lua) stay on the
-- set under their lock, in front, with their heads' scores: read past here, as take.lua passes them.
-- Counted, a partition with such a job running seemed to hold the queue's longest-waiting head, and
-- a take started its projects' next tasks ahead of older heads of the other partitions.
-- KEYS[1]  queue   arq's sorted set of the queue ({taskd}:queue:{queue})
-- ARGV[1]  now_ms  now, in ms: a job scored later is not due
-- ARGV[2]  count   the most scores returned
-- Returns the scores, lowest first.
local line, now_ms, count = KEYS[1], ARGV[1], tonumber(ARGV[2])
local scores, offset = {}, 0
while #scores < count do
  local due = redis.call('ZRANGEBYSCORE', line, '-inf', now_ms, 'WITHSCORES', 'LIMIT', offset, count)
  for i = 1, #due, 2 do
    if #scores < count and redis.call('EXISTS', '@IN_PROGRESS_PREFIX@' .. due[i]) == 0 then
      scores[#scores + 1] = due[i + 1]
    end
  end
  if #due < 2 * count then break end
  offset = offset + count
end
return scores
