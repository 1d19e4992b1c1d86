-- pfm-passdb-http.lua: Dovecot 2.3 Lua passdb asking pfm-authd over HTTP (dovecot.http).
--
--   passdb {
--     driver = lua
--     args = file=/etc/dovecot/pfm-passdb-http.lua blocking=yes
--   }
--   userdb { driver = prefetch }
--   # where pfm-authd's [authd] http_listen is (auth workers get only imported variables)
--   import_environment = TZ PFM_AUTHD_URL=http://127.0.0.1:10042 PFM_AUTHD_TIMEOUT=5
--   # optional, when [authd] http_api_key_file is set: a file holding the same key,
--   # readable by the auth worker's user
--   #   PFM_AUTHD_API_KEY_FILE=/etc/dovecot/pfm-authd.key
--
-- The variant of pfm-passdb.lua (unix socket + luasocket) for hosts without lua-socket or
-- with pfm-authd on another machine. Needs Dovecot >= 2.3.19 (dovecot.http) and only
-- Debian's dovecot-auth-lua. dovecot.http speaks TCP only (no unix sockets). Each auth
-- worker keeps ONE http client whose keep-alive connection is reused between logins.
--
-- pfm-authd answers POST /v1/auth and /v1/lookup with JSON
-- {"result": "ok"|"fail"|"nouser"|"tempfail", "user": ..., "fields": {...}, "reason": ...}:
--   ok       -> PASSDB_RESULT_OK with "fields" as they are (userdb_home, userdb_uid, ...)
--               and the canonical "user"
--   fail     -> PASSDB_RESULT_PASSWORD_MISMATCH
--   nouser   -> PASSDB_RESULT_USER_UNKNOWN
--   tempfail, HTTP errors, timeouts, garbage -> PASSDB_RESULT_INTERNAL_FAILURE
-- pfm-authd sends "100 Continue" at once, so Dovecot's client never waits its 2 s for it.
--
-- Nothing this script logs contains a password. About Dovecot's auth cache and cache_key
-- (TOTP codes!) see pfm-passdb.lua and configs/dovecot/README.md.

local BASE_URL = (os.getenv("PFM_AUTHD_URL") or "http://127.0.0.1:10042"):gsub("/+$", "")
local TIMEOUT = tonumber(os.getenv("PFM_AUTHD_TIMEOUT") or "") or 5
local KEY_FILE = os.getenv("PFM_AUTHD_API_KEY_FILE") or ""

local client = nil -- this worker's http client (created on first use)
local auth_header = nil

-- ------------------------------------------------------------------ JSON (tiny)

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
                  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

-- fields: array of {key, value}; nil values are left out; value is a string or a number
local function json_encode(fields)
  local parts = {}
  for _, kv in ipairs(fields) do
    local v = kv[2]
    -- optional values from the client (client_id ...) may not be UTF-8: leave those out
    if v ~= nil and v ~= "" and (type(v) ~= "string" or utf8.len(v) ~= nil) then
      if type(v) == "number" or type(v) == "boolean" then
        v = tostring(v)
      else
        v = json_string(tostring(v))
      end
      parts[#parts + 1] = json_string(kv[1]) .. ":" .. v
    end
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

-- A small recursive-descent decoder; returns value or nil, error.
local decode_value

local function skip(s, i)
  return s:find("[^ \t\r\n]", i) or #s + 1
end

local function decode_string(s, i) -- s:sub(i, i) == '"'
  local out, j = {}, i + 1
  while true do
    local c = s:sub(j, j)
    if c == "" then return nil, "unterminated string" end
    if c == '"' then return table.concat(out), j + 1 end
    if c == "\\" then
      local e = s:sub(j + 1, j + 1)
      local simple = ({ ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f",
                        n = "\n", r = "\r", t = "\t" })[e]
      if simple then
        out[#out + 1], j = simple, j + 2
      elseif e == "u" then
        local hex = s:sub(j + 2, j + 5)
        if not hex:match("^%x%x%x%x$") then return nil, "bad \\u escape" end
        local cp = tonumber(hex, 16)
        j = j + 6
        if cp >= 0xD800 and cp <= 0xDBFF and s:sub(j, j + 1) == "\\u" then
          local lo = tonumber(s:sub(j + 2, j + 5), 16)
          if lo and lo >= 0xDC00 and lo <= 0xDFFF then
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            j = j + 6
          end
        end
        out[#out + 1] = utf8.char(cp)
      else
        return nil, "bad escape"
      end
    else
      local k = s:find('["\\]', j) or #s + 1
      out[#out + 1], j = s:sub(j, k - 1), k
    end
  end
end

local function decode_object(s, i) -- s:sub(i, i) == "{"
  local obj = {}
  i = skip(s, i + 1)
  if s:sub(i, i) == "}" then return obj, i + 1 end
  while true do
    if s:sub(i, i) ~= '"' then return nil, "object key expected" end
    local key, j = decode_string(s, i)
    if key == nil then return nil, j end
    j = skip(s, j)
    if s:sub(j, j) ~= ":" then return nil, "':' expected" end
    local value, k = decode_value(s, skip(s, j + 1))
    if k == nil then return nil, value end
    obj[key] = value
    k = skip(s, k)
    local c = s:sub(k, k)
    if c == "}" then return obj, k + 1 end
    if c ~= "," then return nil, "',' or '}' expected" end
    i = skip(s, k + 1)
  end
end

local function decode_array(s, i)
  local arr = {}
  i = skip(s, i + 1)
  if s:sub(i, i) == "]" then return arr, i + 1 end
  while true do
    local value, j = decode_value(s, i)
    if j == nil then return nil, value end
    arr[#arr + 1] = value
    j = skip(s, j)
    local c = s:sub(j, j)
    if c == "]" then return arr, j + 1 end
    if c ~= "," then return nil, "',' or ']' expected" end
    i = skip(s, j + 1)
  end
end

decode_value = function(s, i)
  local c = s:sub(i, i)
  if c == "{" then
    local v, j = decode_object(s, i)
    if v == nil then return j, nil end
    return v, j
  elseif c == "[" then
    local v, j = decode_array(s, i)
    if v == nil then return j, nil end
    return v, j
  elseif c == '"' then
    local v, j = decode_string(s, i)
    if v == nil then return j, nil end
    return v, j
  elseif s:sub(i, i + 3) == "true" then return true, i + 4
  elseif s:sub(i, i + 4) == "false" then return false, i + 5
  elseif s:sub(i, i + 3) == "null" then return nil, i + 4
  end
  local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", i)
  if num and num ~= "" then return tonumber(num), i + #num end
  return "unexpected character", nil
end

local function json_decode(s)
  local value, j = decode_value(s, skip(s, 1))
  if j == nil then return nil, value end
  if skip(s, j) <= #s then return nil, "trailing data" end
  return value
end

-- ------------------------------------------------------------------ transport

local function read_key()
  if KEY_FILE == "" then return nil end
  local f = io.open(KEY_FILE, "r")
  if f == nil then return nil end
  local key = (f:read("l") or ""):gsub("%s+$", "")
  f:close()
  if key == "" then return nil end
  return key
end

local function http_client()
  if client == nil then
    client = dovecot.http.client({
      request_timeout_msecs = math.floor(TIMEOUT * 1000),
      max_attempts = 1,
      max_idle_time_msecs = 60000,
      user_agent = "dovecot/pfm-passdb-http",
    })
    local key = read_key()
    if key ~= nil then auth_header = "Bearer " .. key end
  end
  return client
end

-- POST a JSON body; returns the decoded answer or nil, error
local function post(path, body)
  local req = http_client():request({ url = BASE_URL .. path, method = "POST" })
  req:add_header("Content-Type", "application/json")
  if auth_header ~= nil then req:add_header("Authorization", auth_header) end
  req:set_payload(body)
  local resp = req:submit()
  local status = resp:status()
  if status ~= 200 then
    return nil, "HTTP " .. tostring(status) .. " " .. tostring(resp:reason())
  end
  local answer, err = json_decode(resp:payload() or "")
  if type(answer) ~= "table" then return nil, "bad JSON answer: " .. tostring(err) end
  return answer
end

-- ------------------------------------------------------------------ requests

local function request_fields(req)
  local port = function(p) if p ~= nil and p ~= 0 and p ~= "0" then return tonumber(p) end end
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
    {"secured", req.secured and "yes" or nil},
  }
end

local function answer(req, ans, err, lookup)
  local auth = dovecot.auth
  if ans == nil then
    req:log_warning("pfm-authd unreachable: " .. tostring(err))
    return auth.PASSDB_RESULT_INTERNAL_FAILURE, "pfm-authd unreachable"
  end
  local reason = type(ans.reason) == "string" and ans.reason or ""
  if ans.result == "ok" then
    local out = {}
    if type(ans.fields) == "table" then
      for k, v in pairs(ans.fields) do
        if k ~= "password" and k ~= "nopassword" then out[k] = tostring(v) end
      end
    end
    if type(ans.user) == "string" and ans.user ~= "" then out.user = ans.user end
    if lookup then out.nopassword = "y" end
    return auth.PASSDB_RESULT_OK, out
  elseif ans.result == "fail" then
    return auth.PASSDB_RESULT_PASSWORD_MISMATCH, reason
  elseif ans.result == "nouser" then
    return auth.PASSDB_RESULT_USER_UNKNOWN, reason
  end
  req:log_warning("pfm-authd temporary failure: " .. reason)
  return auth.PASSDB_RESULT_INTERNAL_FAILURE, "pfm-authd: temporary failure"
end

local function valid_text(s)
  return s ~= nil and s:find("\0", 1, true) == nil and utf8.len(s) ~= nil
end

-- Dovecot calls this for every plaintext login (PLAIN, LOGIN, doveadm auth test).
function auth_password_verify(req, pass)
  if not valid_text(req.user) then return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, "" end
  if not valid_text(pass) then return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, "" end
  local fields = request_fields(req)
  table.insert(fields, 2, {"password", pass})
  local ans, err = post("/v1/auth", json_encode(fields))
  return answer(req, ans, err, false)
end

-- Lookups without a password (master users, doveadm auth lookup, LMTP, proxies).
function auth_passdb_lookup(req)
  if not valid_text(req.user) then return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, "" end
  local ans, err = post("/v1/lookup", json_encode(request_fields(req)))
  return answer(req, ans, err, true)
end
