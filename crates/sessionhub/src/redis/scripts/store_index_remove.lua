-- KEYS[1] principal; ARGV[1] session id. Re-bounds the key's TTL, which may have come from
-- the entry just removed.
redis.call('ZREM', KEYS[1], ARGV[1])
prune(KEYS[1])
bound(KEYS[1])
return 1
