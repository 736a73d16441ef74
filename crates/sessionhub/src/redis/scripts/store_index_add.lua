-- KEYS[1] principal; ARGV[1] session id, ARGV[2] keep ms.
redis.call('ZADD', KEYS[1], ms(now + tonumber(ARGV[2])), ARGV[1])
prune(KEYS[1])
bound(KEYS[1])
return 1
