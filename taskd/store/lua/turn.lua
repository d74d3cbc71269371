-- turn.lua: keeps the keeper's turn (taskd.engine.keeper) the looking process's, unless another
-- process has taken it.
--
-- A look holds the turn a while at a time, then for the rest after it. One that stalled past its
-- hold (SIGSTOP, a paused VM) while another process took the turn and looked afresh went on with
-- the ids it had read before the stall, and set the turn its own again: its rest from its own end
-- put off the next look up to twice the interval from the last fresh one. Set only when the turn
-- is the caller's or has lapsed (a look that outlasted its hold with nobody taking over still rests
-- after it).
-- KEYS[1]  turn    {taskd}:keeper:{group} of the partition (taskd.keys.keeper_turn)
-- ARGV[1]  holder  the calling process's id
-- ARGV[2]  ms      how long the turn is the caller's from now
-- Returns 1 when the turn is the caller's for `ms`; 0 when another process's (left as it is).
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
