-- Shared by broker_publish, broker_recover and broker_history, which are this text followed by their own.
--
-- epoch_of: the channel's epoch, started afresh when there is none, or when the epoch was
-- started by another Redis process than `run` (the `run_id` of the Redis the command
-- connection talks to): a Redis that restarted from a snapshot, or a replica promoted after
-- a failover, may have lost the newest publications while keeping the epoch, and reusing
-- their offsets in the same epoch would let clients skip publications silently. A Redis
-- whose every write is on disk before it is answered (`appendonly yes`, `appendfsync
-- always`) loses nothing on a restart, so there the broker passes `run` = "" and histories
-- survive restarts.
local function epoch_of(meta, stream, fresh, run)
  local current = redis.call('HMGET', meta, 'e', 'r')
  local epoch = current[1]
  if epoch and run ~= '' and current[2] ~= run then
    epoch = false
  end
  if not epoch then
    epoch = fresh
    redis.call('DEL', meta, stream)
    redis.call('HSET', meta, 'e', epoch, 't', 0, 'r', run)
  end
  return epoch
end
