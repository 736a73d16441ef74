-- Assigns the next offset, appends to the capped history and publishes, atomically.
-- KEYS: meta, history stream, and the idempotency key if there is one (no empty name in
-- its place: on a Redis Cluster that would be a key in another slot).
-- ARGV: data, pub/sub channel (a sharded one on a Redis Cluster), new epoch, the Redis `run_id` to bind the epoch to ("" for
-- none). A publish kept out of history does not come here.
-- Returns `<offset>:<epoch>:<nodes>:<duplicate 0/1>` as one string: redis-rs parses a RESP
-- array at ~1 000 instructions an element, and this reply comes once per publish.
--
-- Redis runs this on every publish (~77 000 instructions, callgrind), so it is kept lean:
-- the history settings are constants in the script's text, written in when the broker starts
-- (the {placeholders} on the next line), not arguments (each argument is a Lua string and
-- table slot made on every call), and the offset becomes text once, with `%d` (Lua's own
-- number-to-text is `%.14g`, ~2 000 instructions each time).
local SIZE, TTL, META_TTL, IDEM = '{size}', '{ttl}', '{meta_ttl}', '{idem}'
-- PUBLISH, or SPUBLISH on a Redis Cluster (the channel shares the keys' slot).
local PUBLISH = '{publish}'

local epoch = epoch_of(KEYS[1], KEYS[2], ARGV[3], ARGV[4])
if KEYS[3] then
  -- `<offset>:<epoch>` of the first publish: after a failover or a loss of the meta hash
  -- the channel has a new epoch, and the offset belongs to the old one. (A bare offset
  -- was written by an earlier version, within the same epoch as far as it knew.)
  local seen = redis.call('GET', KEYS[3])
  if seen then
    if not string.find(seen, ':', 1, true) then seen = seen .. ':' .. epoch end
    return seen .. ':0:1'
  end
end
local offset = string.format('%d', redis.call('HINCRBY', KEYS[1], 't', 1))
redis.call('PEXPIRE', KEYS[1], META_TTL)
-- '~' trims whole stream nodes only, several times cheaper than an exact cap; the stream
-- may hold a few more entries than `size`, and recovery serves only the last `size`.
redis.call('XADD', KEYS[2], 'MAXLEN', '~', SIZE, offset .. '-0', 'd', ARGV[1])
redis.call('PEXPIRE', KEYS[2], TTL)
if KEYS[3] then
  redis.call('SET', KEYS[3], offset .. ':' .. epoch, 'PX', IDEM)
end
local nodes = redis.call(PUBLISH, ARGV[2], offset .. ':' .. epoch .. ':' .. ARGV[1])
return offset .. ':' .. epoch .. ':' .. string.format('%d', nodes) .. ':0'
