-- Moves a session to a new id with changes applied.
-- KEYS[1] old session, KEYS[2] new session; ARGV as for store_update; also answers 'taken'.
--
-- The two keys hash to different slots, so on Redis Cluster this script would fail with
-- CROSSSLOT: there a rotation takes two steps instead (store_rotate_take, then store_create
-- on the new id; see store/redis/rotation.rs).

local compute, write, prefetch = batch()
local old, new = KEYS[1], KEYS[2]
local current = prefetch(old, 2)
if not current then return 'missing' end
if redis.call('EXISTS', new) == 1 then return 'taken' end
local reply = {}
local pending, err = compute(2, function(field) return current[field] end, reply)
if not pending then return err end
redis.call('RENAME', old, new)
write(new, 2, pending)
redis.call('PEXPIRE', new, ARGV[1])
return reply
