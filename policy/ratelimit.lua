-- pfm-policyd sliding-window log, one call per decision (reserve, commit, release, usage).
--
-- Per counter three keys sharing one hash tag:
--   L  ZSET  member -> timestamp of the charge (committed and pending)
--   W  HASH  member -> weight, plus "~sum" = total weight in L
--   P  ZSET  member -> deadline, pending reservations only
-- The clock comes from the caller (ARGV), so tests can inject time and hosts share it.
--
-- ARGV: op, now, ttl, ncounters, then per counter: window limit,
--       then ncharges, per charge: counter_index weight member enforce,
--       then nrelease, per release: counter_index member.
-- KEYS: per counter L W P (counter i uses KEYS[3i-2..3i]).
-- Reply of reserve/commit: ok, then per charge: used, allowed, added (1 when newly added).

local op = ARGV[1]
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local nc = tonumber(ARGV[4])
local pos = 5
local windows, limits = {}, {}
for i = 1, nc do
  windows[i] = tonumber(ARGV[pos]); limits[i] = tonumber(ARGV[pos + 1])
  pos = pos + 2
end
local ncharge = tonumber(ARGV[pos]); pos = pos + 1
local charges = {}
for i = 1, ncharge do
  charges[i] = {tonumber(ARGV[pos]), tonumber(ARGV[pos + 1]), ARGV[pos + 2], ARGV[pos + 3] == "1"}
  pos = pos + 4
end
local nrel = tonumber(ARGV[pos]); pos = pos + 1
local releases = {}
for i = 1, nrel do
  releases[i] = {tonumber(ARGV[pos]), ARGV[pos + 1]}
  pos = pos + 2
end

local function keys(i)
  return KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
end

local function drop(L, W, P, members, total)
  -- remove members (in chunks: unpack has a limit) and return the new total
  local n = #members
  local i = 1
  while i <= n do
    local j = math.min(i + 999, n)
    local chunk = {unpack(members, i, j)}
    local ws = redis.call('HMGET', W, unpack(chunk))
    for k = 1, #ws do
      if ws[k] then total = total - tonumber(ws[k]) end
    end
    redis.call('HDEL', W, unpack(chunk))
    redis.call('ZREM', L, unpack(chunk))
    redis.call('ZREM', P, unpack(chunk))
    i = j + 1
  end
  return total
end

local totals = {}
local function expire(i)
  if totals[i] ~= nil then return totals[i] end
  local L, W, P = keys(i)
  local total = tonumber(redis.call('HGET', W, '~sum') or '0')
  local changed = false
  local old = redis.call('ZRANGEBYSCORE', L, '-inf', now - windows[i])
  if #old > 0 then total = drop(L, W, P, old, total); changed = true end
  local dead = redis.call('ZRANGEBYSCORE', P, '-inf', now)
  if #dead > 0 then total = drop(L, W, P, dead, total); changed = true end
  if total < 0 then total = 0 end
  if changed then
    if total == 0 and redis.call('ZCARD', L) == 0 then
      redis.call('DEL', L, W, P)
    else
      redis.call('HSET', W, '~sum', total)
    end
  end
  totals[i] = total
  return total
end

local function touch(i, extra)
  local L, W, P = keys(i)
  local ms = math.floor((windows[i] + extra + 60) * 1000)
  redis.call('PEXPIRE', L, ms); redis.call('PEXPIRE', W, ms)
  if redis.call('EXISTS', P) == 1 then redis.call('PEXPIRE', P, ms) end
end

local function release_all()
  local touched = {}
  for _, r in ipairs(releases) do
    local i, m = r[1], r[2]
    local L, W, P = keys(i)
    if redis.call('HEXISTS', W, m) == 1 then
      local total = expire(i)
      totals[i] = drop(L, W, P, {m}, total)
      redis.call('HSET', W, '~sum', totals[i])
      touched[i] = true
    end
  end
  return touched
end

if op == 'usage' then
  local out = {}
  for i = 1, nc do
    local L, W, P = keys(i)
    local total = expire(i)
    local pend = 0
    local members = redis.call('ZRANGE', P, 0, -1)
    if #members > 0 then
      local ws = redis.call('HMGET', W, unpack(members))
      for k = 1, #ws do if ws[k] then pend = pend + tonumber(ws[k]) end end
    end
    out[#out + 1] = total - pend
    out[#out + 1] = pend
  end
  return out
end

if op == 'release' then
  release_all()
  return {}
end

if op == 'commit' then release_all() end

-- reserve / commit: check every charge, add all when every enforce charge fits
local ok = true
local extra = {}
local out = {}
local present = {}
local batch = {}
for k, c in ipairs(charges) do
  local i, weight, member, enforce = c[1], c[2], c[3], c[4]
  local L, W, P = keys(i)
  local used = expire(i) + (extra[i] or 0)
  local here = redis.call('HEXISTS', W, member) == 1
  local dup = batch[i .. '\0' .. member] == true
  local allowed = here or dup or (used + weight <= limits[i])
  if allowed and not here and not dup then
    extra[i] = (extra[i] or 0) + weight
    batch[i .. '\0' .. member] = true
  end
  here = here or dup
  if not allowed and enforce then ok = false end
  present[k] = here
  out[#out + 1] = used
  out[#out + 1] = allowed and 1 or 0
  out[#out + 1] = 0
end
if ok then
  for k, c in ipairs(charges) do
    if not present[k] then
      local i, weight, member = c[1], c[2], c[3]
      local L, W, P = keys(i)
      if redis.call('HSETNX', W, member, weight) == 1 then
        redis.call('ZADD', L, now, member)
        redis.call('HINCRBY', W, '~sum', weight)
        if op == 'reserve' then redis.call('ZADD', P, now + ttl, member) end
        out[3 * k] = 1
      end
    end
  end
end
for i = 1, nc do touch(i, ttl) end
table.insert(out, 1, ok and 1 or 0)
return out
