-- KEYS[1] session; ARGV[1] version. The key's PTTL, or -2 unless it holds a record of this
-- format, so that `expires_in` agrees with `update` about what is a session.

if redis.pcall('HGET', KEYS[1], 'm:v') ~= ARGV[1] then return -2 end
return redis.call('PTTL', KEYS[1])
