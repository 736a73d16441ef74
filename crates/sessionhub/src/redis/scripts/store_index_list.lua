-- KEYS[1] principal. Returns the live ids, ascending by deadline. Pruning cannot lower the
-- latest deadline, so the key's TTL stays right without touching it.
prune(KEYS[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
