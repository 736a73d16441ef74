-- Shared by the principal-index scripts, which are this text followed by their own: the
-- current time in milliseconds by the server's clock, and the lapsed-entry cleanup: prune,
-- then make the key expire with its latest entry.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- '%.0f': tostring() would print a large number in exponent form, losing digits.
local function ms(n) return string.format('%.0f', n) end

local function prune(key)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ms(now))
end

-- An empty sorted set no longer exists, so there is nothing to expire then.
local function bound(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 2 then
    redis.call('PEXPIRE', key, ms(tonumber(last[2]) - now))
  end
end
