-- One take from a rate limit's bucket, by GCRA (the generic cell rate algorithm): the
-- bucket is one number, the theoretical arrival time (TAT) of the next take, in
-- microseconds on Redis' own clock, so that the nodes' clocks never matter.
--
-- KEYS[1]  the bucket
-- ARGV[1]  the emission interval: the limit's period divided by its count, in µs
-- ARGV[2]  the burst tolerance: the period minus one interval, in µs (a fresh bucket
--          allows `count` takes at once)
-- Answers 0 when the take is allowed, else how many µs until one would be.
--
-- Microseconds since the epoch (~1.8e15) stay exact in Lua's doubles (2^53 ~ 9e15).
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
local allowed_at = tat - tolerance
if now < allowed_at then
  return allowed_at - now
end
local next_tat = tat + interval
-- %.0f: tostring would write a large number in exponent form and lose digits.
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX',
  math.floor((next_tat - now) / 1000) + 1)
return 0
