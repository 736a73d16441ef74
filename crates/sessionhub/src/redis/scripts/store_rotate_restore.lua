-- Puts back a session that store_rotate_take moved off its old id, when the second step
-- found the new id taken (see store/redis/rotation.rs).
-- KEYS[1] the moving key, KEYS[2] the old session; ARGV[1] ttl ms. Returns 1 if put back;
-- 0 if the moving key is gone (it expired) or the old id holds a record again.

if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('RENAMENX', KEYS[1], KEYS[2]) == 0 then return 0 end
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
