-- Applies changes to a session that exists (never resurrects one).
-- KEYS[1] session; ARGV[1] ttl ms, then change triples. Returns the new value of each
-- increment, or 'missing', or 'nan <index>' / 'overflow <index>' (nothing changed).

local compute, write, prefetch = batch()
local key = KEYS[1]
local current = prefetch(key, 2)
if not current then return 'missing' end
local reply = {}
local pending, err = compute(2, function(field) return current[field] end, reply)
if not pending then return err end
write(key, 2, pending)
redis.call('PEXPIRE', key, ARGV[1])
return reply
