-- Takes back the webhook event held under a key (webhook_hold.lua), if webhook_claim.lua has
-- not moved it into the stream yet: a comeback within the grace.
-- KEYS[1] the held keys (zset), KEYS[2] the held events (hash); in the `{webhooks}` slot.
-- ARGV[1] the key.
-- Answers 1 if an event was taken back (it is never delivered), else 0.

if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
    return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
