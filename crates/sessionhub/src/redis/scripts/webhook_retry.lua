-- Gives a claimed webhook event back for another try: out of the stream, into the delayed
-- events until it is due (webhook_claim.lua moves it back).
-- KEYS[1] the stream, KEYS[2] the delayed events (zset); in the `{webhooks}` slot.
-- ARGV[1] the consumer group, ARGV[2] the entry id, ARGV[3] when it is due (ms since the
-- Unix epoch), ARGV[4] "<attempts>:<event JSON>".
-- Answers 1, or 0 if the entry was no longer there (another consumer took it over and
-- dealt with it), in which case nothing is queued again.

if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
    return 0
end
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return 1
