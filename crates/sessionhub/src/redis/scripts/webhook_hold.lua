-- Queues one webhook event held under a key until it is due (a channel's vacated, a
-- member's leave, held for the grace), unless the queue is at its bound; webhook_cancel.lua
-- takes it back until webhook_claim.lua moves it into the stream when due.
-- KEYS[1] the stream, KEYS[2] the delayed events (zset), KEYS[3] the held keys (zset: key
-- scored by when its event is due), KEYS[4] the held events (hash: key -> event JSON);
-- all in the `{webhooks}` slot.
-- ARGV[1] the bound, ARGV[2] the key, ARGV[3] when it is due (ms since the Unix epoch),
-- ARGV[4] the event (JSON).
-- Answers 1 if queued, 0 if the queue is full. An event already held under the key (not
-- claimed yet) is replaced: it counts toward the bound once.

local replacing = redis.call('ZSCORE', KEYS[3], ARGV[2])
if not replacing and redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
        + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[1]) then
    return 0
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
return 1
