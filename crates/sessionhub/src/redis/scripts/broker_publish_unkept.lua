-- Publishes a publication kept out of history once per idempotency key.
-- KEYS: idempotency key. ARGV: the `0::<data>` payload, pub/sub channel, window ms, the
-- command to publish with (PUBLISH, or SPUBLISH on a Redis Cluster).
-- Returns `<nodes>:<duplicate 0/1>`.
if redis.call('SET', KEYS[1], '0', 'NX', 'PX', ARGV[3]) then
  return string.format('%d', redis.call(ARGV[4], ARGV[2], ARGV[1])) .. ':0'
end
return '0:1'
