-- Takes one node out of presence: a graceful stop, or a node that stopped beating (reaped by
-- a survivor), as presence_beat.lua wrote it.
-- KEYS[1] the node set, KEYS[2] the node's counts, KEYS[3] its users, KEYS[4] every user
-- online (hash), KEYS[5] the channels the node holds presence members in (set); all in the
-- `{presence}` slot. ARGV[1] node id; ARGV[2] 'dead' to withdraw it only if its liveness
-- expired before ARGV[3] (ms since the Unix epoch), or 'any'.
-- Answers nil if there was nothing to withdraw (alive, or another survivor reaped it first:
-- only one of two racing reapers gets the channels, so leaves are announced once), else the
-- channels whose presence entries of the node must be reaped (presence_reap_channel.lua),
-- and the users who thereby went offline (no other node holds them): {channels, went}.

local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[2] == 'dead' and (not score or tonumber(score) >= tonumber(ARGV[3])) then
    return nil
end
local users = redis.call('SMEMBERS', KEYS[3])
local went = {}
for _, user in ipairs(users) do
    if redis.call('HINCRBY', KEYS[4], user, -1) <= 0 then
        redis.call('HDEL', KEYS[4], user)
        table.insert(went, user)
    end
end
local channels = redis.call('SMEMBERS', KEYS[5])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5])
redis.call('ZREM', KEYS[1], ARGV[1])
return {channels, went}
