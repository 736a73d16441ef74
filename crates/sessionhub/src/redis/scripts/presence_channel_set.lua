-- Sets how many connections a user has on one channel on one node, and tells whether that
-- made the user join or leave the channel cluster-wide.
-- KEYS[1] the channel's users (hash: user -> connections across the cluster), KEYS[2] the
-- channel's entries of this node (hash: user -> connections here), KEYS[3] the channel's
-- connection total (string), KEYS[4] the channel's version (string), KEYS[5] the users'
-- info (hash: user -> JSON text); all with the channel as hash tag. ARGV[1] the user,
-- ARGV[2] the user's connections on this node now, ARGV[3] the user's info ('' for none):
-- kept if the user thereby joins (the info of their first connection cluster-wide, as
-- Pusher has it), dropped when they leave. ARGV[4] the most users the channel may have
-- ('' for no limit): a change that would make the user join past it changes nothing.
-- Answers {1 (joined), -1 (left), 2 (refused: the channel is full) or 0; how many users the node still has on the channel,
-- so that the node can take the channel out of its index when it reaches 0; the version
-- after a join or leave, 0 otherwise}. Nodes announce joins and leaves after this returns,
-- each on its own, so announcements of different nodes can pass each other: the version
-- puts them back in the order this script decided them.
--
-- An absolute count rather than a delta: sending it twice changes nothing, and a node that
-- was reaped while cut off from Redis puts its users back with its next change.

local was = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local now = tonumber(ARGV[2])
local diff = now - was
if diff == 0 then
    return {0, redis.call('HLEN', KEYS[2]), 0}
end
-- Checked here, with the join, so that joins racing on many nodes cannot all find the
-- last place free.
local limit = tonumber(ARGV[4])
if limit and diff > 0 and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0
        and redis.call('HLEN', KEYS[1]) >= limit then
    return {2, redis.call('HLEN', KEYS[2]), 0}
end
if now > 0 then
    redis.call('HSET', KEYS[2], ARGV[1], now)
else
    redis.call('HDEL', KEYS[2], ARGV[1])
end
if redis.call('INCRBY', KEYS[3], diff) <= 0 then
    redis.call('DEL', KEYS[3])
end
local total = redis.call('HINCRBY', KEYS[1], ARGV[1], diff)
if total <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[1])
end
local transition = 0
if total - diff <= 0 and total > 0 then
    transition = 1
elseif total - diff > 0 and total <= 0 then
    transition = -1
end
-- Removed only by a leave (here or presence_channel_reap.lua), not by a join without info:
-- a join that finds info left behind shows the leak instead of hiding it.
if transition == 1 and ARGV[3] ~= '' then
    redis.call('HSET', KEYS[5], ARGV[1], ARGV[3])
elseif transition == -1 then
    redis.call('HDEL', KEYS[5], ARGV[1])
end
local version = 0
if transition ~= 0 then
    version = redis.call('INCR', KEYS[4])
end
return {transition, redis.call('HLEN', KEYS[2]), version}
