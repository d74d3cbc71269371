-- release.lua: gives back the slots a task holds on one device of this host, if this lease holds them.
--
-- KEYS[1]  device  {taskd}:gpu:{host}:{index}, the device's holders hash (task id -> 'worker id|slots')
-- ARGV[1]  task_id the task whose slots are given back
-- ARGV[2]  holder  what the lease's acquire wrote: 'worker id|slots'
-- A release is retried until Redis answers (taskd.engine.executor), so one whose reply was lost
-- comes again, and by then the task, queued again, may hold the device under another worker of the
-- host: a plain HDEL dropped that holder while its run went on, and its slots were handed out twice.
-- (A later claim by the same worker waits for its release: Executor._lease_for.)
-- Returns 1 when given back; 0 when the task holds nothing here, or holds it under another holder.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
return redis.call('HDEL', KEYS[1], ARGV[1])
