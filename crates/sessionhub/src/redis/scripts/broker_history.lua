-- Reads a channel's position and a page of its history; starts an epoch for a channel
-- without a valid one (as broker_recover does, so the position it answers stays valid).
-- KEYS: meta, history stream. ARGV: since epoch ("" for none), since offset, new epoch,
-- meta ttl ms, the Redis `run_id` to bind the epoch to ("" for none), limit, "1" for
-- newest first, history size. Returns {epoch, top offset, XRANGE or XREVRANGE entries}.
local epoch = epoch_of(KEYS[1], KEYS[2], ARGV[3], ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local top = tonumber(redis.call('HGET', KEYS[1], 't'))
local entries = {}
local limit = tonumber(ARGV[6])
-- Offsets of another epoch count another history: they select nothing in this one.
if limit > 0 and (ARGV[1] == '' or ARGV[1] == epoch) then
  -- The stream is trimmed roughly ('~') and may hold more than `size`: serve only those.
  local after = '(' .. string.format('%d', math.max(tonumber(ARGV[2]), top - tonumber(ARGV[8]))) .. '-0'
  if ARGV[7] == '1' then
    entries = redis.call('XREVRANGE', KEYS[2], '+', after, 'COUNT', limit)
  else
    entries = redis.call('XRANGE', KEYS[2], after, '+', 'COUNT', limit)
  end
end
return {epoch, top, entries}
