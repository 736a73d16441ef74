-- First step of a rotation on Redis Cluster, where the old and the new id hash to different
-- slots (see store/redis/rotation.rs): takes the session off its old id.
-- KEYS[1] old session, KEYS[2] its moving key (same slot); ARGV[1] the moving key's TTL ms,
-- then change triples as for store_update. Checks the changes against the record, then
-- renames the record, unchanged, to the moving key: from then on the old id is no session
-- for any reader or writer. Returns {the new value of each increment, the record after the
-- changes as field/value pairs}; or 'missing', or 'nan <index>' / 'overflow <index>'
-- (nothing changed).

local compute, _, prefetch = batch()
local old, moving = KEYS[1], KEYS[2]
local current = prefetch(old, 2)
if not current then return 'missing' end
local increments = {}
local pending, err = compute(2, function(field) return current[field] end, increments)
if not pending then return err end
redis.call('RENAME', old, moving)
redis.call('PEXPIRE', moving, ARGV[1])
local h = redis.call('HGETALL', moving)
local fields = {}
local function put(field, value)
  if value then
    fields[#fields + 1] = field
    fields[#fields + 1] = value
  end
  pending[field] = nil
end
for j = 1, #h, 2 do
  local value = pending[h[j]]
  if value == nil then value = h[j + 1] end
  put(h[j], value)
end
-- The fields the changes add, in the order of the changes.
for i = 3, #ARGV, 3 do
  put(ARGV[i], pending[ARGV[i]])
end
return {increments, fields}
