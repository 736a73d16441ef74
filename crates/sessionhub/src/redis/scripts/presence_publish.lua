-- Publishes one node's presence snapshot and drops the nodes whose snapshots expired.
-- KEYS[1] the node set, KEYS[2] this node's snapshot (both in the `{presence}` slot);
-- ARGV[1] node id, ARGV[2] the snapshot, ARGV[3] its TTL ms, ARGV[4] when it expires and
-- ARGV[5] now, in ms since the Unix epoch by the node's clock.
--
-- One script rather than a MULTI/EXEC pipeline: on Redis Cluster a transaction refused
-- midway (MOVED after a failover) comes back as EXECABORT, which redis-rs' cluster client
-- does not take as a reason to read the slot map again, so a node that only publishes kept
-- sending it to a node that no longer owns the slot (presence_cluster.rs).

redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[5])
return 1
