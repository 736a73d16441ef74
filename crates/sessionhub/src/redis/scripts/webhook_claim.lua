-- Claims up to ARGV[4] webhook events for one consumer: first the delayed and held events
-- now due (moved into the stream, where a held one can no longer be cancelled), then
-- entries another consumer claimed and has neither acked nor retried for ARGV[3] ms (it
-- died: XAUTOCLAIM takes them over), then new entries.
-- KEYS[1] the stream, KEYS[2] the delayed events (zset), KEYS[3] the held keys (zset),
-- KEYS[4] the held events (hash), as webhook_hold.lua writes them; in the `{webhooks}` slot.
-- ARGV[1] the consumer group, ARGV[2] this consumer, ARGV[3] the lease (ms), ARGV[4] how
-- many at most, ARGV[5] now (ms since the Unix epoch).
-- Answers a flat list: entry id, event JSON, failed attempts; per claimed entry.

local function queue(event, attempts)
    redis.call('XADD', KEYS[1], '*', 'e', event, 'a', attempts)
end
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[5], 'LIMIT', 0, 100)
for _, member in ipairs(due) do
    -- Members are "<attempts>:<event JSON>", unique by the event's id.
    local colon = string.find(member, ':', 1, true)
    queue(string.sub(member, colon + 1), string.sub(member, 1, colon - 1))
    redis.call('ZREM', KEYS[2], member)
end
local held = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[5], 'LIMIT', 0, 100)
for _, key in ipairs(held) do
    local event = redis.call('HGET', KEYS[4], key)
    if event then
        queue(event, 0)
    end
    redis.call('ZREM', KEYS[3], key)
    redis.call('HDEL', KEYS[4], key)
end

local max = tonumber(ARGV[4])
local out = {}
local function take(entries)
    for _, entry in ipairs(entries) do
        -- An entry deleted while pending comes back without fields (Redis 6.2).
        if #out < 3 * max and type(entry) == "table" and entry[2] then
            local fields = entry[2]
            local event, attempts
            for i = 1, #fields, 2 do
                if fields[i] == 'e' then event = fields[i + 1] end
                if fields[i] == 'a' then attempts = fields[i + 1] end
            end
            if event then
                table.insert(out, entry[1])
                table.insert(out, event)
                table.insert(out, attempts or '0')
            end
        end
    end
end

-- The group is made on first use (NOGROUP), not tried at every claim: each node claims
-- every 200 ms when idle.
local stale = redis.pcall('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', max)
if type(stale) == 'table' and stale.err then
    redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
    stale = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', max)
end
take(stale[2])
local left = max - #out / 3
if left > 0 then
    local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', left, 'STREAMS', KEYS[1], '>')
    if read then
        take(read[1][2])
    end
end
return out
