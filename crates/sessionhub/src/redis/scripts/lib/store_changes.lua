-- Shared by the session scripts that apply changes (store_update, store_update_load,
-- store_rotate), which are this text followed by their own.
--
-- VERSION is the record format written to `m:v`; it must equal store::redis's VERSION (a
-- unit test there checks it).
--
-- add_text: integer arithmetic, `add_text(stored, delta)`, the decimal text of a stored
-- integer plus a delta, exact over all of i64 although Lua 5.1 numbers are doubles. Below
-- 10^15 both ways doubles add exactly, which is the fast path; anything else (and the check
-- that the stored text is an integer at all) goes through `exact_add`, which works on
-- `{negative, high, low}` with magnitude `high * 1e9 + low`, both parts below 2^53.
--
-- Every Lua operation costs Redis far more than the same work in C (tens of instructions per
-- VM instruction, and about a thousand per call of a library function; a script's top-level
-- `local function` makes a closure on every run), so the common case is kept short:
-- `exact_add` is defined only when the fast path does not apply.
--
-- batch: compute every change first, write after, since Redis does not roll back a script
-- that fails halfway.
local VERSION = '1'

local find, format, tonumber = string.find, string.format, tonumber

-- `stored` (text; false or nil: absent) plus `delta` (decimal text), as decimal text; or nil
-- and 'nan' (`stored` is not an integer) or 'overflow'. Absent and JSON null count as 0.
local function add_text(stored, delta)
  if not stored or stored == 'null' then stored = '0' end
  if #stored <= 15 and #delta <= 15 and (stored == '0' or find(stored, '^%-?[1-9]%d*$')) then
    -- '%d' (a cast to long, exact below 2^53) is several times cheaper than '%.0f', which
    -- formats a float digit by digit.
    return format('%d', tonumber(stored) + tonumber(delta))
  end

  local function exact_add(stored, delta)
    local BASE = 1000000000
    local MAX_HI, MAX_LO = 9223372036, 854775807

    local function fits(neg, hi, lo)
      if hi ~= MAX_HI then return hi < MAX_HI end
      if neg then return lo <= MAX_LO + 1 end
      return lo <= MAX_LO
    end

    local function parse_int(s)
      local neg = false
      local digits = s
      if string.sub(s, 1, 1) == '-' then
        neg = true
        digits = string.sub(s, 2)
      end
      local n = string.len(digits)
      if n == 0 or n > 19 or not string.match(digits, '^%d+$') then return nil end
      if n > 1 and string.sub(digits, 1, 1) == '0' then return nil end
      local hi, lo = 0, tonumber(digits)
      if n > 9 then
        hi = tonumber(string.sub(digits, 1, n - 9))
        lo = tonumber(string.sub(digits, n - 8))
      end
      if hi == 0 and lo == 0 then neg = false end
      if not fits(neg, hi, lo) then return nil end
      return {neg, hi, lo}
    end

    local a, b = parse_int(stored), parse_int(delta)
    if a == nil then return nil, 'nan' end
    local sa = a[1] and -1 or 1
    local sb = b[1] and -1 or 1
    local hi = sa * a[2] + sb * b[2]
    local lo = sa * a[3] + sb * b[3]
    local carry = math.floor(lo / BASE)
    lo = lo - carry * BASE
    hi = hi + carry
    local neg = hi < 0
    if neg then
      if lo > 0 then
        hi = -hi - 1
        lo = BASE - lo
      else
        hi = -hi
      end
    end
    if not fits(neg, hi, lo) then return nil, 'overflow' end
    local s
    -- '%.0f': tostring() would print a large number in exponent form, losing digits.
    if hi > 0 then
      s = format('%.0f%09.0f', hi, lo)
    else
      s = format('%.0f', lo)
    end
    if neg then s = '-' .. s end
    return s
  end

  return exact_add(stored, delta)
end

-- The batch helpers, defined when asked for: UPDATE_LOAD's single change needs none of them.
local function batch()
  -- Changes are ARGV triples from index `first`: op ('s', 'r' or 'i'), field, JSON text or
  -- delta. `stored(field)` is what the hash holds in an incremented field (false: absent).
  -- Returns the final value of every touched field (false: removed), having appended the new
  -- value of each increment to `reply`; or nil and an error reply naming the failing change by
  -- its index ('nan 2').
  local function compute(first, stored, reply)
    local pending = {}
    for i = first, #ARGV, 3 do
      local op, field, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
      if op == 's' then
        pending[field] = value
      elseif op == 'r' then
        pending[field] = false
      else
        local current = pending[field]
        if current == nil then current = stored(field) end
        local text, err = add_text(current, value)
        if not text then return nil, err .. ' ' .. ((i - first) / 3) end
        pending[field] = text
        reply[#reply + 1] = text
      end
    end
    return pending
  end

  -- Writes each touched field once, with its final value, in the order of the changes.
  local function write(key, first, pending)
    local sets, dels = {}, {}
    for i = first + 1, #ARGV, 3 do
      local field = ARGV[i]
      local value = pending[field]
      if value then
        sets[#sets + 1] = field
        sets[#sets + 1] = value
      elseif value == false then
        dels[#dels + 1] = field
      end
      pending[field] = nil
    end
    -- In chunks: unpack() of a long list overflows the Lua stack.
    for j = 1, #sets, 200 do
      redis.call('HSET', key, unpack(sets, j, math.min(j + 199, #sets)))
    end
    for j = 1, #dels, 200 do
      redis.call('HDEL', key, unpack(dels, j, math.min(j + 199, #dels)))
    end
  end

  -- One HMGET for the format version and what the hash holds in every field the changes (from
  -- index `first`) increment: the table behind `stored`, or nil unless `key` holds a session of
  -- this format (pcall: a key of another type is "not a session", not an error).
  local function prefetch(key, first)
    local fields = {}
    for i = first, #ARGV, 3 do
      if ARGV[i] == 'i' then fields[#fields + 1] = ARGV[i + 1] end
    end
    local head = math.min(#fields, 199)
    local got = redis.pcall('HMGET', key, 'm:v', unpack(fields, 1, head))
    if got.err or got[1] ~= VERSION then return nil end
    local current = {}
    for j = 1, head do current[fields[j]] = got[j + 1] end
    for j = 200, #fields, 200 do
      local more = redis.call('HMGET', key, unpack(fields, j, math.min(j + 199, #fields)))
      for k = 1, #more do current[fields[j + k - 1]] = more[k] end
    end
    return current
  end
  return compute, write, prefetch
end
