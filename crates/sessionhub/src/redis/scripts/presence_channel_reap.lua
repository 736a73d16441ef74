-- Removes every entry one node has on one channel (the node died or stopped), and answers
-- the users that this made leave the channel cluster-wide with the version of each leave
-- ({user, version, user, version, ...}), to announce them.
-- KEYS as presence_channel_set.lua: the channel's users, the node's entries, the
-- connection total, the version, the users' info (a user who leaves loses theirs). Two
-- reapers racing: the first takes the entries, the second finds none.

local entries = redis.call('HGETALL', KEYS[2])
local left = {}
local removed = 0
for i = 1, #entries, 2 do
    local user, count = entries[i], tonumber(entries[i + 1])
    removed = removed + count
    if redis.call('HINCRBY', KEYS[1], user, -count) <= 0 then
        redis.call('HDEL', KEYS[1], user)
        redis.call('HDEL', KEYS[5], user)
        left[#left + 1] = user
        left[#left + 1] = redis.call('INCR', KEYS[4])
    end
end
if removed > 0 and redis.call('DECRBY', KEYS[3], removed) <= 0 then
    redis.call('DEL', KEYS[3])
end
redis.call('DEL', KEYS[2])
return left
