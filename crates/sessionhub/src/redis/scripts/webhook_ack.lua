-- Removes a delivered (or given up) webhook event.
-- KEYS[1] the stream. ARGV[1] the consumer group, ARGV[2] the entry id.

redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
