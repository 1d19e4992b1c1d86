-- pfm-passdb.lua: Dovecot 2.3 Lua passdb that asks pfm-authd whether a login is good.
--
--   passdb {
--     driver = lua
--     args = file=/etc/dovecot/pfm-passdb.lua blocking=yes
--   }
--   # tell the script where pfm-authd listens (auth workers get only imported variables)
--   import_environment = TZ PFM_AUTHD_SOCKET=/run/pfm/authd.sock PFM_AUTHD_TIMEOUT=5
--
-- With blocking=yes the script runs in Dovecot's auth-worker processes (user root on
-- Dovecot 2.3 by default; `service auth-worker { user = ... }` changes it), each handling
-- one request at a time. Every worker keeps ONE persistent luasocket unix-socket connection
-- to pfm-authd and reconnects after any error. Needs Debian's dovecot-auth-lua and lua-socket.
--
-- It speaks pfm-authd's wire format (authd/wire.py): a frame is "PFA1", a type letter, a
-- 4-byte big-endian payload length and the payload, a sequence of key NUL value NUL.
-- Requests: A (AUTH, with password) and L (LOOKUP, no password). Replies: O OK, F FAIL,
-- N NOUSER, T TEMPFAIL, E ERROR.
--
--   OK        -> PASSDB_RESULT_OK with the reply's fields: user (canonical name), home/uid/gid
--                as userdb_home/userdb_uid/userdb_gid (for userdb prefetch), every other
--                field (userdb_quota_rule, nologin, ...) as it is
--   FAIL      -> PASSDB_RESULT_PASSWORD_MISMATCH
--   NOUSER    -> PASSDB_RESULT_USER_UNKNOWN
--   TEMPFAIL, ERROR, connect/read/write errors, timeouts, garbage
--             -> PASSDB_RESULT_INTERNAL_FAILURE (Dovecot: "Temporary authentication failure")
--
-- Nothing this script logs contains a password.
--
-- Dovecot's auth cache (auth_cache_size > 0) caches this passdb under cache_key, e.g.
-- `args = file=... blocking=yes cache_key=%u%{password}%s` (see configs/dovecot/README.md:
-- with TOTP the password carries a one-time code, and a cache hit is a login pfm-authd
-- never sees, so a replayed code within auth_cache_ttl would pass; keep the TTL short or
-- leave the cache off).

local unix = require("socket.unix")

local SOCKET_PATH = os.getenv("PFM_AUTHD_SOCKET") or "/run/pfm/authd.sock"
local TIMEOUT = tonumber(os.getenv("PFM_AUTHD_TIMEOUT") or "") or 5
local MAX_PAYLOAD = 65536

local conn = nil -- this worker's connection to pfm-authd

-- ------------------------------------------------------------------ codec

local function be32(n)
  return string.char(
    math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end

local function valid_text(s)
  return s:find("\0", 1, true) == nil and utf8.len(s) ~= nil
end

-- fields: array of {key, value}; empty values are left out (as authd.wire does)
local function encode(ftype, fields)
  local parts = {}
  for _, kv in ipairs(fields) do
    local value = kv[2]
    -- optional values Dovecot got from the client (client_id ...) may not be UTF-8 text:
    -- leave those out rather than have pfm-authd refuse the whole frame
    if value ~= nil and value ~= "" and valid_text(value) then
      parts[#parts + 1] = kv[1] .. "\0" .. value .. "\0"
    end
  end
  local payload = table.concat(parts)
  return "PFA1" .. ftype .. be32(#payload) .. payload
end

local function decode_payload(payload)
  local out = {}
  local pos = 1
  while pos <= #payload do
    local kend = payload:find("\0", pos, true)
    if kend == nil then return nil end
    local vend = payload:find("\0", kend + 1, true)
    if vend == nil then return nil end
    out[payload:sub(pos, kend - 1)] = payload:sub(kend + 1, vend - 1)
    pos = vend + 1
  end
  return out
end

-- ------------------------------------------------------------------ transport

local function disconnect()
  if conn ~= nil then
    conn:close()
    conn = nil
  end
end

local function connect()
  local c, err = (unix.stream or unix)()
  if c == nil then return nil, err end
  c:settimeout(TIMEOUT)
  local ok, cerr = c:connect(SOCKET_PATH)
  if ok == nil then
    c:close()
    return nil, cerr
  end
  return c
end

-- One request/answer on conn. Returns type, fields or nil, error, retryable.
local function exchange(frame)
  local ok, err = conn:send(frame)
  if ok == nil then return nil, "send: " .. tostring(err), err == "closed" end
  local header, rerr, partial = conn:receive(9)
  if header == nil then
    -- "closed" with nothing read: the server dropped an idle connection before reading
    -- this request, so sending it again on a fresh connection is safe. A timeout is not.
    return nil, "receive: " .. tostring(rerr), rerr == "closed" and (partial or "") == ""
  end
  if header:sub(1, 4) ~= "PFA1" then return nil, "reply is not a PFA1 frame", false end
  local b1, b2, b3, b4 = header:byte(6, 9)
  local length = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  if length > MAX_PAYLOAD then return nil, "reply frame too large", false end
  local payload = ""
  if length > 0 then
    payload, rerr = conn:receive(length)
    if payload == nil then return nil, "receive: " .. tostring(rerr), false end
  end
  local fields = decode_payload(payload)
  if fields == nil then return nil, "malformed reply payload", false end
  return header:sub(5, 5), fields
end

-- Send a frame, (re)connecting as needed; returns reply type and fields or nil, error.
local function ask(frame)
  for attempt = 1, 2 do
    local fresh = false
    if conn == nil then
      local c, err = connect()
      if c == nil then return nil, "connect " .. SOCKET_PATH .. ": " .. tostring(err) end
      conn, fresh = c, true
    end
    local rtype, fields, retry = exchange(frame)
    if rtype ~= nil then return rtype, fields end
    disconnect()
    if fresh or not retry or attempt == 2 then return nil, fields end
  end
end

-- ------------------------------------------------------------------ requests

local function request_fields(req, kind)
  local port = function(p) if p ~= nil and p ~= 0 and p ~= "0" then return tostring(p) end end
  return {
    {"user", req.user},
    {"service", req.service},
    {"remote_ip", req.remote_ip},
    {"remote_port", port(req.remote_port)},
    {"local_ip", req.local_ip},
    {"local_port", port(req.local_port)},
    {"client_id", req.client_id},
    {"master_user", req.master_user},
    {"mechanism", req.mechanism},
    {"secured", req.secured},
  }
end

local DROP = { reason = true, password = true, nopassword = true }
local RENAME = { home = "userdb_home", uid = "userdb_uid", gid = "userdb_gid" }

local function dovecot_fields(fields)
  local out = {}
  for key, value in pairs(fields) do
    if not DROP[key] then out[RENAME[key] or key] = value end
  end
  return out
end

local function answer(req, rtype, fields, lookup)
  local auth = dovecot.auth
  if rtype == nil then
    req:log_warning("pfm-authd unreachable: " .. fields)
    return auth.PASSDB_RESULT_INTERNAL_FAILURE, "pfm-authd unreachable"
  end
  local reason = fields.reason or ""
  if rtype == "O" then
    local out = dovecot_fields(fields)
    if lookup then out.nopassword = "y" end
    return auth.PASSDB_RESULT_OK, out
  elseif rtype == "F" then
    return auth.PASSDB_RESULT_PASSWORD_MISMATCH, reason
  elseif rtype == "N" then
    return auth.PASSDB_RESULT_USER_UNKNOWN, reason
  elseif rtype == "T" then
    req:log_warning("pfm-authd temporary failure: " .. reason)
    return auth.PASSDB_RESULT_INTERNAL_FAILURE, "pfm-authd: temporary failure"
  end
  disconnect() -- ERROR or an unknown type: do not trust this connection any more
  req:log_warning("pfm-authd error reply: " .. reason)
  return auth.PASSDB_RESULT_INTERNAL_FAILURE, "pfm-authd: protocol error"
end

-- Dovecot calls this for every plaintext login (PLAIN, LOGIN, doveadm auth test).
function auth_password_verify(req, pass)
  if not valid_text(req.user) then return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, "" end
  if not valid_text(pass) then return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, "" end
  local fields = request_fields(req)
  table.insert(fields, 2, {"password", pass})
  local rtype, reply = ask(encode("A", fields))
  return answer(req, rtype, reply, false)
end

-- Dovecot calls this for lookups without a password: master-user logins (the target
-- user), `doveadm auth lookup`, LMTP/proxy passdb lookups, non-plaintext mechanisms.
-- It answers whether the user exists, with its fields and nopassword=y. It cannot make a
-- non-plaintext mechanism (CRAM-MD5 ...) succeed: Dovecot gets no credentials from it.
function auth_passdb_lookup(req)
  if not valid_text(req.user) then return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, "" end
  local rtype, reply = ask(encode("L", request_fields(req)))
  return answer(req, rtype, reply, true)
end

function script_deinit()
  disconnect()
end
