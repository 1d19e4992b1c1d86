-- pfm-policyd exact sliding-window log, one call per operation (reserve, commit, release, usage).
--
-- Per counter three keys sharing one hash tag (one Cluster slot):
--   L  ZSET    member -> timestamp; a pending reservation gets the virtual timestamp
--              now + min(ttl, window) - window, so it leaves the window exactly when its
--              ttl ends and one ZRANGEBYSCORE expires committed and pending entries alike
--   W  HASH    member -> weight, "p<weight>" for a pending reservation
--   S  STRING  running total weight of the entries in L
-- The clock comes from the caller (ARGV), never from Redis TIME: tests inject time and the
-- hosts of a fleet share wall-clock time.
-- TTLs: every add sets PEXPIRE window + 60 s on the three keys of its counter, beyond the
-- window of every entry they hold; removals keep TTLs (ZREM, HDEL, DECRBY, SET KEEPTTL) and
-- a counter left empty is deleted, so nothing grows without bound. Needs Redis >= 6.0.
--
-- ARGV: op, now, ttl, ncounters, then per counter: window limit,
--       then ncharges, per charge: counter_index weight member enforce,
--       then nrelease, per release: counter_index member.
-- KEYS: per counter L W S (counter i uses KEYS[3i-2..3i]).
-- Reply of reserve/commit: ok, then per charge: used, allowed, added (1 when newly added).
-- Reply of usage: per counter: committed, pending.

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
  -- counter index, weight, member, enforce, weight as sent (exact text for HSET)
  charges[i] = {tonumber(ARGV[pos]), tonumber(ARGV[pos + 1]), ARGV[pos + 2], ARGV[pos + 3] == "1",
                ARGV[pos + 1]}
  pos = pos + 4
end
local nrel = tonumber(ARGV[pos]); pos = pos + 1

local function keys(i)
  local b = 3 * i
  return KEYS[b - 2], KEYS[b - 1], KEYS[b]
end

local function weight(v)
  if string.byte(v) == 112 then return tonumber(string.sub(v, 2)) end  -- "p<weight>"
  return tonumber(v)
end

-- after S went to total <= 0: delete an empty counter, or repair S (never negative, and
-- never without a TTL even if it was lost and re-created by DECRBY)
local function settle(L, W, S, total)
  if total > 0 then return total end
  if redis.call('ZCARD', L) == 0 then
    redis.call('DEL', L, W, S)
  else
    local left = redis.call('PTTL', L)
    if left > 0 then redis.call('SET', S, 0, 'PX', left) else redis.call('SET', S, 0, 'KEEPTTL') end
  end
  return 0
end

local totals = {}  -- counter index -> total after expiry (valid for this call)
local function expire(i)
  local total = totals[i]
  if total ~= nil then return total end
  local L, W, S = keys(i)
  local cutoff = now - windows[i]
  total = tonumber(redis.call('GET', S) or '0')
  local old = redis.call('ZRANGEBYSCORE', L, '-inf', cutoff)
  local n = #old
  if n > 0 then
    local gone = 0
    local j = 1
    while j <= n do  -- in chunks: unpack has a limit
      local k = math.min(j + 999, n)
      local ws = redis.call('HMGET', W, unpack(old, j, k))
      for x = 1, #ws do
        if ws[x] then gone = gone + weight(ws[x]) end
      end
      redis.call('HDEL', W, unpack(old, j, k))
      j = k + 1
    end
    redis.call('ZREMRANGEBYSCORE', L, '-inf', cutoff)
    total = settle(L, W, S, redis.call('DECRBY', S, gone))
  end
  totals[i] = total
  return total
end

local function release(i, m)
  local L, W, S = keys(i)
  local v = redis.call('HGET', W, m)
  if not v then return end
  redis.call('HDEL', W, m)
  redis.call('ZREM', L, m)
  local total = settle(L, W, S, redis.call('DECRBY', S, weight(v)))
  if totals[i] ~= nil then totals[i] = total end
end

local function release_all()
  for _ = 1, nrel do
    release(tonumber(ARGV[pos]), ARGV[pos + 1])
    pos = pos + 2
  end
end
if op == 'usage' then
  local out = {}
  for i = 1, nc do
    local _, W = keys(i)
    local total = expire(i)
    local pend = 0
    for _, v in ipairs(redis.call('HVALS', W)) do
      if string.byte(v) == 112 then pend = pend + tonumber(string.sub(v, 2)) end
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
  local i, w, member, enforce = c[1], c[2], c[3], c[4]
  local L, W, S = keys(i)
  local used = expire(i) + (extra[i] or 0)
  local tag = i .. '\0' .. member
  local here = batch[tag] == true or redis.call('HEXISTS', W, member) == 1
  local allowed = here or (used + w <= limits[i])
  if not here and (allowed or not enforce) then  -- a refused shadow charge is still added
    extra[i] = (extra[i] or 0) + w
    batch[tag] = true
  end
  if not allowed and enforce then ok = false end
  present[k] = here
  out[#out + 1] = used
  out[#out + 1] = allowed and 1 or 0
  out[#out + 1] = 0
end
if ok then
  local dirty = {}
  for k, c in ipairs(charges) do
    if not present[k] then
      local i, w, member = c[1], c[2], c[3]
      local L, W, S = keys(i)
      if op == 'reserve' then
        redis.call('HSET', W, member, 'p' .. c[5])
        redis.call('ZADD', L, now + math.min(ttl, windows[i]) - windows[i], member)
      else
        redis.call('HSET', W, member, c[5])
        redis.call('ZADD', L, now, member)
      end
      redis.call('INCRBY', S, c[5])
      dirty[i] = true
      out[3 * k] = 1
    end
  end
  for i in pairs(dirty) do
    local L, W, S = keys(i)
    local ms = math.floor((windows[i] + 60) * 1000)
    redis.call('PEXPIRE', L, ms); redis.call('PEXPIRE', W, ms); redis.call('PEXPIRE', S, ms)
  end
end
table.insert(out, 1, ok and 1 or 0)
return out
