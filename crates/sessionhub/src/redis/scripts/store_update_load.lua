-- Applies changes and returns the record, in one step.
-- KEYS[1] session; ARGV[1] ttl ms, ARGV[2] the oldest creation time in ms since the Unix
-- epoch that the absolute lifetime allows (the node's now - lifetime), or '' for none; then
-- change triples from ARGV[3]. Returns, as one JSON text, the hash as it was before the
-- changes (flat, as HGETALL) followed by the new value of each increment; or the failures of
-- store_update.
--
-- One HGETALL is the existence and format check, the values to increment and the record to
-- return. Only the version is checked here, as by store_update and store_rotate: a record of
-- this version that the node cannot decode (a field outside `a:`/`m:`, an attribute that is
-- not JSON...) takes the changes before the node finds that out and treats it as absent.
-- Checking more in Lua would cost every request for the sake of records only corruption
-- produces.
--
-- A single change, the common case (`/get-session`'s increment), skips the batch helpers.

local key = KEYS[1]
local h = redis.pcall('HGETALL', key)
if h.err then return 'missing' end
local n = #h
-- One scan finds the meta fields and, for a single change, what its field holds.
local single = #ARGV == 5 and ARGV[4]
local version, created, current = nil, nil, false
for j = 1, n, 2 do
  local field = h[j]
  if field == 'm:v' then
    version = h[j + 1]
  elseif field == 'm:created' then
    created = h[j + 1]
  elseif field == single then
    current = h[j + 1]
  end
end
if version ~= VERSION then return 'missing' end
if single then
  local op, value = ARGV[3], ARGV[5]
  if op == 's' then
    redis.call('HSET', key, single, value)
  elseif op == 'r' then
    redis.call('HDEL', key, single)
  else
    local text, err = add_text(current, value)
    if not text then return err .. ' 0' end
    redis.call('HSET', key, single, text)
    h[n + 1] = text
  end
elseif #ARGV > 5 then
  local function stored(field)
    for j = 1, n, 2 do
      if h[j] == field then return h[j + 1] end
    end
    return false
  end
  local compute, write = batch()
  local pending, err = compute(3, stored, h)
  if not pending then return err end
  write(key, 3, pending)
end
local ttl = ARGV[1]
created = tonumber(created)
if ARGV[2] ~= '' and created then
  local left = created - tonumber(ARGV[2])
  if left < tonumber(ttl) then ttl = format('%.0f', math.max(left, 1)) end
end
redis.call('PEXPIRE', key, ttl)
return cjson.encode(h)
