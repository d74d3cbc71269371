-- progress.lua: records the progress of a task, if the calling worker still runs it.
--
-- KEYS[1]  task       taskd:task:{id}, the record hash
-- ARGV[1]  progress   the fraction done, 0.0 to 1.0
-- ARGV[2]  step       the current step's description; '' leaves the stored one
-- ARGV[3]  now        now, in seconds (the record's updated_at)
-- ARGV[4]  worker_id  the calling worker's id
-- Returns 1 when written (and a progress event emitted); 0 when the task is not processing or
-- is another worker's.
-- include lib/emit.lua
if redis.call('HGET', KEYS[1], 'status') ~= 'processing' then return 0 end
if redis.call('HGET', KEYS[1], 'worker_id') ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'updated_at', ARGV[3])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'current_step', ARGV[2]) end
emit(KEYS[1], 'progress')
return 1
