-- Withdraws one node's presence snapshot (a graceful stop), as presence_publish wrote it.
-- KEYS[1] the node set, KEYS[2] this node's snapshot; ARGV[1] node id.

redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
