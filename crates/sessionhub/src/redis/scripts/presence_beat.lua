-- One node's presence heartbeat: its counts, its liveness, and the users it gained or lost
-- since the last beat (deltas, so a beat costs what changed, not what is connected).
-- KEYS[1] the node set (zset: node id scored by when its liveness expires), KEYS[2] this
-- node's counts (JSON), KEYS[3] this node's users (set), KEYS[4] every user online in the
-- cluster (hash: user -> how many nodes hold them); all in the `{presence}` slot.
-- ARGV[1] node id, ARGV[2] the counts, ARGV[3] their TTL ms, ARGV[4] when the node's
-- liveness expires (ms since the Unix epoch), ARGV[5] how many users were added; then the
-- added users, then the removed ones.
-- Answers {absent, came, went}: absent is 1 if the node was not in the node set (a first
-- beat, or the node was reaped while it could not reach Redis: it must then send all its
-- users again), else 0; came, the users who thereby came online in the cluster (no other
-- node held them), went, those who went offline (no node holds them now). Decided here,
-- atomically, so that each comes out of one node's beat: the node that sends the webhooks.
--
-- Idempotent: a user counts for a node once however often it is sent (SADD/SREM decide),
-- so a beat whose reply was lost may be sent again. Dead nodes are left in the node set
-- for presence_withdraw.lua, which needs to find them.
--
-- One script rather than a MULTI/EXEC pipeline: on Redis Cluster a transaction refused
-- midway (MOVED after a failover) comes back as EXECABORT, which redis-rs' cluster client
-- does not take as a reason to read the slot map again, so a node that only beats kept
-- sending it to a node that no longer owns the slot (presence_cluster.rs).

redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
local new = redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
local added = tonumber(ARGV[5])
local came, went = {}, {}
for i = 6, 5 + added do
    if redis.call('SADD', KEYS[3], ARGV[i]) == 1 then
        if redis.call('HINCRBY', KEYS[4], ARGV[i], 1) == 1 then
            table.insert(came, ARGV[i])
        end
    end
end
for i = 6 + added, #ARGV do
    if redis.call('SREM', KEYS[3], ARGV[i]) == 1 then
        if redis.call('HINCRBY', KEYS[4], ARGV[i], -1) <= 0 then
            redis.call('HDEL', KEYS[4], ARGV[i])
            table.insert(went, ARGV[i])
        end
    end
end
return {new, came, went}
