-- Creates a session unless the id is taken.
-- KEYS[1] session; ARGV[1] ttl ms, then field/value pairs. Returns 1 if created.

if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for j = 2, #ARGV, 200 do
  redis.call('HSET', KEYS[1], unpack(ARGV, j, math.min(j + 199, #ARGV)))
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
