-- Reads a channel's position and, if the caller's epoch matches, the history after its
-- offset; starts an epoch for a channel without a valid one.
-- KEYS: meta, history stream. ARGV: since epoch ("" for none), since offset, new epoch,
-- meta ttl ms, the Redis `run_id` to bind the epoch to ("" for none), history size.
-- Returns {epoch, top offset, XRANGE entries}.
local epoch = epoch_of(KEYS[1], KEYS[2], ARGV[3], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local top = tonumber(redis.call('HGET', KEYS[1], 't'))
local entries = {}
local since = tonumber(ARGV[2])
if ARGV[1] ~= '' and ARGV[1] == epoch and since < top and top - since <= tonumber(ARGV[6]) then
  entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2] .. '-0', '+')
end
return {epoch, top, entries}
