-- Loads a session and slides its expiry.
-- KEYS[1] session; ARGV[1] ttl ms. Returns the HGETALL reply as one JSON text (decoded by
-- store::redis::reply), nil if there is no such key, or -1 if the key is not a hash.

local h = redis.pcall('HGETALL', KEYS[1])
if h.err then return -1 end
if #h == 0 then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return cjson.encode(h)
