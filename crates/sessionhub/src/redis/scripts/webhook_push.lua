-- Queues one webhook event, unless the queue is at its bound.
-- KEYS[1] the stream of due events, KEYS[2] the delayed events (zset scored by when they are
-- due, ms since the Unix epoch), KEYS[3] the held keys (webhook_hold.lua); all in the
-- `{webhooks}` slot.
-- ARGV[1] the bound, ARGV[2] the event (JSON).
-- Answers 1 if queued, 0 if the queue is full. Delivered entries are deleted from the
-- stream (webhook_ack.lua), so its length counts the queued ones, claimed or not.

if redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
        + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[1]) then
    return 0
end
redis.call('XADD', KEYS[1], '*', 'e', ARGV[2], 'a', 0)
return 1
