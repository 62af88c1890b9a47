--- A client for container registries (the OCI distribution API, /v2/) on moonops.http.
--
-- Image references, WWW-Authenticate challenges (Basic and Bearer), the token
-- exchange, credentials from Docker's and Podman's configuration files and
-- credential helpers, and the few calls moonops needs: ping and manifests.
local crypto = require "moonops.crypto"
local fs = require "moonops.fs"
local http = require "moonops.http"
local json = require "moonops.json"
local log = require "moonops.log"
local proc = require "moonops.proc"

local M = {}

M.DOCKER_HUB = "docker.io"
M.DOCKER_HUB_API = "registry-1.docker.io"
M.DOCKER_HUB_KEY = "https://index.docker.io/v1/"

--- Manifest media types asked for, most specific first: OCI and Docker indexes and manifests.
M.MANIFEST_TYPES = {
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
}
M.ACCEPT = table.concat(M.MANIFEST_TYPES, ", ")

-- ---- image references ------------------------------------------------------

-- One path component: lower-case alphanumerics separated by ".", "_", "__" or dashes.
local function valid_component(c)
  local _, e = c:find("^[a-z0-9]+")
  if not e then return false end
  local i = e + 1
  while i <= #c do
    local sep = c:match("^__", i) or c:match("^[._]", i) or c:match("^%-+", i)
    if not sep then return false end
    i = i + #sep
    _, e = c:find("^[a-z0-9]+", i)
    if not e then return false end
    i = e + 1
  end
  return true
end

local function valid_host(h)
  local host, port = h:match("^(%[[%x:.]+%])(.*)$")
  if not host then host, port = h:match("^([%w.-]+)(.*)$") end
  if not host or host:match("^[.-]") or host:match("[.-]$") then return false end
  return port == "" or port:match("^:%d+$") ~= nil
end

--- Parse an image reference `[host[:port]/]path[:tag][@algorithm:hex]`, the way docker does:
-- the first component is a registry host when it has a "." or ":" or is "localhost";
-- otherwise the image is on Docker Hub (and a single name is under library/).
-- Returns {registry=, repository=, name= (registry/repository), tag=, digest=} or nil, message.
function M.parse_reference(ref)
  if type(ref) ~= "string" or ref == "" then return nil, "empty image reference" end
  local function bad(why) return nil, string.format("invalid image reference %q: %s", ref, why) end
  if ref:find("[%s%c]") then return bad("it contains whitespace") end
  local rest, digest = ref, nil
  local at = ref:find("@", 1, true)
  if at then
    rest, digest = ref:sub(1, at - 1), ref:sub(at + 1)
    local alg, hex = digest:match("^([a-z0-9]+[a-z0-9+._-]*):([%w=_-]+)$")
    if not alg then return bad("the digest must look like sha256:<hex>") end
    if alg == "sha256" and not (#hex == 64 and hex:match("^[0-9a-f]+$")) then
      return bad("a sha256 digest has 64 lower-case hex digits")
    end
  end
  local tag
  local last_slash = rest:match("^.*()/") or 0
  local colon = rest:match("^.*():")
  if colon and colon > last_slash then
    rest, tag = rest:sub(1, colon - 1), rest:sub(colon + 1)
    if not tag:match("^[%w_][%w_.-]*$") or #tag > 128 then
      return bad("a tag is up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'")
    end
  end
  if rest == "" then return bad("the name is missing") end
  local registry, repository
  local first, remainder = rest:match("^([^/]+)/(.+)$")
  if first and (first:find("[.:]") or first == "localhost" or first:find("%u")) then
    registry, repository = first, remainder
    if not valid_host(registry) then return bad("bad registry host " .. registry) end
  else
    registry, repository = M.DOCKER_HUB, rest
    if not rest:find("/", 1, true) then repository = "library/" .. rest end
  end
  for c in (repository .. "/"):gmatch("([^/]*)/") do
    if not valid_component(c) then
      return bad(string.format("%q is not a valid name component (lower-case letters, digits and . _ -)", c))
    end
  end
  if #registry + 1 + #repository > 255 then return bad("the name is longer than 255 characters") end
  return { registry = registry, repository = repository, name = registry .. "/" .. repository, tag = tag,
    digest = digest }
end

--- The reference as text: name[:tag][@digest].
function M.format_reference(r)
  return r.name .. (r.tag and (":" .. r.tag) or "") .. (r.digest and ("@" .. r.digest) or "")
end

--- True when `registry` (host[:port]) is on this machine: localhost, 127.0.0.0/8 or ::1.
function M.is_loopback(registry)
  local host = registry:match("^%[([^%]]+)%]") or registry:match("^([^:]+)") or registry
  host = host:lower()
  return host == "localhost" or host == "::1" or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

-- ---- WWW-Authenticate ------------------------------------------------------------

local TOKEN = "[!#$%%&'*+.^_`|~%w-]+"

--- Parse a WWW-Authenticate header (RFC 7235): several challenges, each a scheme and
-- parameters with token or quoted values (with spaces, commas and backslash escapes).
-- Returns a list of {scheme= (lower-case), params={name (lower-case) = value}, token68=}
-- or nil, message. A parameter given twice (several `scope`s) is joined with a space.
function M.parse_challenges(header)
  if type(header) ~= "string" then return nil, "no WWW-Authenticate header" end
  local list, cur = {}, nil
  local pos, n = 1, #header
  local function fail(what)
    return nil, string.format("cannot parse WWW-Authenticate %q: %s at character %d", header, what, pos)
  end
  while true do
    pos = header:find("[^%s,]", pos) or n + 1
    if pos > n then break end
    local tok = header:match("^" .. TOKEN, pos)
    if not tok then return fail("expected a name") end
    local after = pos + #tok
    local value_at = header:match("^%s*=%s*()", after)
    if value_at and cur and not header:match("^%s*=%s*=", after) then
      local name = tok:lower()
      local value
      pos = value_at
      if header:sub(pos, pos) == '"' then
        local parts, i = {}, pos + 1
        while true do
          local c = header:sub(i, i)
          if c == "" then return fail("unterminated quoted value") end
          if c == '"' then break end
          if c == "\\" then
            i = i + 1
            c = header:sub(i, i)
            if c == "" then return fail("unterminated quoted value") end
          end
          parts[#parts + 1] = c
          i = i + 1
        end
        value, pos = table.concat(parts), i + 1
      else
        value = header:match("^[^,%s]+", pos) -- a token; URLs unquoted by lenient servers too
        if not value then return fail("expected a value for " .. name) end
        pos = pos + #value
      end
      if cur.params[name] then
        cur.params[name] = cur.params[name] .. " " .. value
      else
        cur.params[name] = value
      end
      if not header:match("^%s*,", pos) and not header:match("^%s*$", pos) then
        return fail("expected a comma")
      end
    else
      cur = { scheme = tok:lower(), params = {} }
      list[#list + 1] = cur
      pos = after
      -- token68 credentials right after the scheme ("Negotiate abc==")
      local t68, t68_end = header:match("^%s+([%w%-._~+/]+=*)%s*()", pos)
      if t68 and (t68_end > n or header:sub(t68_end, t68_end) == ",") then
        cur.token68 = t68
        pos = t68_end
      end
    end
  end
  if #list == 0 then return nil, "empty WWW-Authenticate header" end
  return list
end

--- The scopes of a Bearer challenge as a list (the scope parameter is space-separated).
function M.scopes(challenge)
  local out = {}
  for s in ((challenge.params or {}).scope or ""):gmatch("%S+") do out[#out + 1] = s end
  return out
end

-- ---- credentials ----------------------------------------------------------------

-- The host part of an auths key ("https://host:5000/v1/" -> "host:5000"), Docker Hub aliases unified.
local function auth_key_host(key)
  local host = key:gsub("^%a[%w+.-]*://", ""):gsub("/.*$", ""):lower()
  if host == "index.docker.io" or host == "registry-1.docker.io" or host == "docker.io" then
    return M.DOCKER_HUB
  end
  return host
end

local function getter(opts)
  local env = opts and opts.env
  return function(name)
    local v
    if env then v = env[name] end
    if v == nil then v = os.getenv(name) end
    if v == "" then v = nil end
    return v
  end
end

--- The auth files searched, in order: Docker's config.json ($DOCKER_CONFIG, else
-- ~/.docker), then Podman's ($REGISTRY_AUTH_FILE, else $XDG_RUNTIME_DIR/containers/auth.json).
function M.auth_files(opts)
  local getenv = getter(opts)
  local files = {}
  local docker = getenv("DOCKER_CONFIG")
  if docker then
    files[#files + 1] = docker .. "/config.json"
  elseif getenv("HOME") then
    files[#files + 1] = getenv("HOME") .. "/.docker/config.json"
  end
  if getenv("REGISTRY_AUTH_FILE") then
    files[#files + 1] = getenv("REGISTRY_AUTH_FILE")
  elseif getenv("XDG_RUNTIME_DIR") then
    files[#files + 1] = getenv("XDG_RUNTIME_DIR") .. "/containers/auth.json"
  end
  return files
end

-- `docker-credential-<helper> get` with the server on stdin.
local function from_helper(helper, server, file, getenv)
  local name = "docker-credential-" .. helper
  local exe = proc.which(name, getenv("PATH"))
  if not exe then
    return nil, string.format("credential helper %s (named in %s) is not on PATH: install it or remove it from %s",
      name, file, file)
  end
  local res, err = proc.run { argv = { exe, "get" }, stdin = server, timeout = 60 }
  if not res then return nil, err end
  if res.code ~= 0 then
    local out = (res.stdout .. res.stderr):gsub("%s+$", "")
    if out:lower():find("not found", 1, true) then return false end
    return nil, string.format("%s get %s failed (exit %d): %s", name, server, res.code, out:sub(1, 200))
  end
  local doc = json.decode(res.stdout)
  if type(doc) ~= "table" or type(doc.Secret) ~= "string" then
    return nil, string.format("%s get %s: unexpected output", name, server)
  end
  if doc.Username == "<token>" then
    return { identity_token = doc.Secret, source = name }
  end
  return { username = doc.Username, password = doc.Secret, source = name }
end

local function from_entry(entry, file)
  if type(entry) ~= "table" then return nil end
  local creds = { source = file }
  if type(entry.auth) == "string" and entry.auth ~= "" then
    local plain = crypto.unbase64(entry.auth)
    local user, pass = (plain or ""):match("^([^:]*):(.*)$")
    if not user then return nil, string.format("%s: an \"auth\" value is not base64 of user:password", file) end
    creds.username, creds.password = user, pass
  elseif type(entry.username) == "string" then
    creds.username, creds.password = entry.username, entry.password
  end
  if type(entry.identitytoken) == "string" and entry.identitytoken ~= "" then
    creds.identity_token = entry.identitytoken
  end
  if creds.username or creds.identity_token then return creds end
  return nil
end

--- Credentials for `registry` (host[:port]) from the auth files and credential helpers.
-- opts.env overrides environment variables (DOCKER_CONFIG, HOME, XDG_RUNTIME_DIR,
-- REGISTRY_AUTH_FILE, PATH). Returns {username=, password=, identity_token=, source=},
-- false when none are configured, or nil, message when a file or helper is broken.
-- Passwords and tokens are registered with moonops.log as secrets.
function M.credentials(registry, opts)
  local getenv = getter(opts)
  local want = auth_key_host(registry)
  local server = want == M.DOCKER_HUB and M.DOCKER_HUB_KEY or registry
  for _, file in ipairs(M.auth_files(opts)) do
    if fs.exists(file) then
      local text, rerr = fs.read(file)
      if not text then return nil, rerr end
      local doc, jerr = json.decode(text)
      if type(doc) ~= "table" then return nil, string.format("%s: %s", file, jerr or "expected a JSON object") end
      local helper
      for key, name in pairs(type(doc.credHelpers) == "table" and doc.credHelpers or {}) do
        if auth_key_host(key) == want then helper = name end
      end
      local entry
      for key, e in pairs(type(doc.auths) == "table" and doc.auths or {}) do
        if auth_key_host(key) == want then entry = e end
      end
      helper = helper or (type(doc.credsStore) == "string" and doc.credsStore ~= "" and doc.credsStore) or nil
      local creds, err
      if helper then
        creds, err = from_helper(helper, server, file, getenv)
        if creds == nil then return nil, err end
      end
      if not creds then
        creds, err = from_entry(entry, file)
        if err then return nil, err end
      end
      if creds then
        log.secret(creds.password)
        log.secret(creds.identity_token)
        return creds
      end
    end
  end
  return false
end

-- ---- the client -------------------------------------------------------------------

local Client = {}
Client.__index = Client

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-._~]", function(c) return string.format("%%%02X", c:byte()) end))
end
M.urlencode = urlencode

--- A client for one registry (host[:port]; "docker.io" means Docker Hub).
-- opts: {credentials = table | false (anonymous) | nil (look them up when asked),
--        insecure = bool (allow plain http and unverified TLS), cainfo = CA bundle path,
--        timeout = seconds (30),
--        env = {} (see credentials)}
function M.client(registry, opts)
  opts = opts or {}
  assert(type(registry) == "string" and registry ~= "", "registry: a host is required")
  local self = setmetatable({
    registry = registry,
    host = registry == M.DOCKER_HUB and M.DOCKER_HUB_API or registry,
    credentials = opts.credentials,
    insecure = opts.insecure and true or false,
    cainfo = opts.cainfo,
    loopback = M.is_loopback(registry),
    timeout = opts.timeout or 30,
    env = opts.env,
    tokens = {}, -- scope key -> {value=, expires=}
    basic = nil, -- "Basic ..." once the registry asked for it
  }, Client)
  return self
end

function Client:creds()
  if self.credentials == nil then
    local creds, err = M.credentials(self.registry, { env = self.env })
    if creds == nil then return nil, err end
    self.credentials = creds
  end
  return self.credentials or nil
end

function Client:who()
  local c = self.credentials
  if c and c.username then return string.format(" as %q", c.username) end
  if c and c.identity_token then return " with an identity token" end
  return " anonymously"
end

-- One HTTP exchange. The scheme is chosen on the first exchange and kept: https; for a
-- loopback registry plain http first (what such a registry almost always speaks; https
-- when http is refused or answered with 400, as TLS ports answer plain requests); with
-- `insecure`, https without verification and then http.
function Client:send(req)
  local schemes = { "https" }
  if self.scheme then
    schemes = { self.scheme }
  elseif self.loopback then
    schemes = { "http", "https" }
  elseif self.insecure then
    schemes = { "https", "http" }
  end
  local res, err, code
  for i, scheme in ipairs(schemes) do
    req.url = scheme .. "://" .. self.host .. req.path
    req.insecure = self.insecure
    req.cainfo = self.cainfo
    req.timeout = req.timeout or self.timeout
    req.connect_timeout = 10
    res, err, code = http.request(req)
    if res then
      if not (scheme == "http" and res.status == 400 and schemes[i + 1]) then
        self.scheme = scheme
        return res
      end
    elseif code ~= "tls" and code ~= "transfer" then
      break
    end
  end
  local hint = ""
  if code == "tls" and not (self.loopback or self.insecure) then
    hint = " (plain http is only used for loopback registries or with --insecure-registry)"
  end
  return nil, string.format("registry %s is unreachable: %s%s", self.registry, err, hint), code
end

-- A Bearer token for `scopes` from the challenge's realm.
function Client:token(params, scopes)
  local realm = params.realm
  if not realm then return nil, string.format("registry %s: Bearer challenge without a realm", self.registry) end
  local u = http.parse_url(realm)
  if not u or (u.scheme ~= "https" and u.scheme ~= "http") then
    return nil, string.format("registry %s: bad token realm %q", self.registry, http.redact_url(realm))
  end
  local creds, cerr = self:creds()
  if cerr then return nil, cerr end
  if creds and u.scheme == "http" and not (self.insecure or M.is_loopback(u.host)) then
    return nil, string.format("registry %s: refusing to send credentials to a plain http token realm %s",
      self.registry, http.redact_url(realm))
  end
  local req = { follow = true, timeout = self.timeout, connect_timeout = 10, insecure = self.insecure,
    cainfo = self.cainfo,
    headers = { Accept = "application/json" } }
  if creds and creds.identity_token then
    local form = { "grant_type=refresh_token", "client_id=moonops",
      "refresh_token=" .. urlencode(creds.identity_token) }
    if params.service then form[#form + 1] = "service=" .. urlencode(params.service) end
    if #scopes > 0 then form[#form + 1] = "scope=" .. urlencode(table.concat(scopes, " ")) end
    req.method, req.url, req.body = "POST", realm, table.concat(form, "&")
    req.headers["Content-Type"] = "application/x-www-form-urlencoded"
  else
    local q = {}
    if params.service then q[#q + 1] = "service=" .. urlencode(params.service) end
    for _, s in ipairs(scopes) do q[#q + 1] = "scope=" .. urlencode(s) end
    if creds and creds.username then q[#q + 1] = "account=" .. urlencode(creds.username) end
    req.url = realm .. (#q > 0 and ((realm:find("?", 1, true) and "&" or "?") .. table.concat(q, "&")) or "")
    if creds and creds.username then
      req.headers.Authorization = "Basic " .. crypto.base64(creds.username .. ":" .. (creds.password or ""))
    end
  end
  local res, err = http.request(req)
  if not res then
    return nil, string.format("registry %s: token endpoint unreachable: %s", self.registry, err)
  end
  if res.status == 401 or res.status == 403 then
    return nil, string.format("registry %s: authentication failed%s (the token endpoint %s answered %d)",
      self.registry, self:who(), http.redact_url(realm), res.status), "auth"
  end
  if res.status ~= 200 then
    return nil, string.format("registry %s: token endpoint %s answered HTTP %d", self.registry,
      http.redact_url(realm), res.status)
  end
  local doc = json.decode(res.body)
  local token = type(doc) == "table" and (doc.token or doc.access_token)
  if type(token) ~= "string" or token == "" then
    return nil, string.format("registry %s: the token endpoint %s gave no token", self.registry,
      http.redact_url(realm))
  end
  log.secret(token)
  local ttl = type(doc) == "table" and math.tointeger(doc.expires_in) or 60
  return token, ttl
end

local function scope_key(scopes)
  local s = {}
  for i, v in ipairs(scopes) do s[i] = v end
  table.sort(s)
  return table.concat(s, " ")
end

--- One request to the registry API with authentication: the cached Authorization
-- first; on a 401, answer its challenge (Basic credentials, or a Bearer token for the
-- challenge's scopes, else `opts.scope`) and retry once.
-- opts: {method=, headers=, body=, body_file=, output_file=, scope=, timeout=}.
-- Returns the http response or nil, message, code ("auth" for refused credentials).
function Client:request(path, opts)
  opts = opts or {}
  local want = opts.scope and { opts.scope } or {}
  local key = scope_key(want)
  local function attempt(authorization)
    local headers = {}
    for k, v in pairs(opts.headers or {}) do headers[k] = v end
    headers.Authorization = authorization
    return self:send { method = opts.method or "GET", path = path, headers = headers, body = opts.body,
      body_file = opts.body_file, output_file = opts.output_file, timeout = opts.timeout }
  end
  local cached = self.tokens[key]
  local auth = self.basic
  if cached and cached.expires > os.time() then auth = "Bearer " .. cached.value end
  local res, err, code = attempt(auth)
  if not res or res.status ~= 401 then return res, err, code end

  local challenges, perr = M.parse_challenges(res.headers["www-authenticate"])
  if not challenges then return nil, string.format("registry %s: 401 Unauthorized: %s", self.registry, perr), "auth" end
  local bearer, basic
  for _, c in ipairs(challenges) do
    if c.scheme == "bearer" and not bearer then bearer = c end
    if c.scheme == "basic" and not basic then basic = c end
  end
  if bearer then
    local scopes = M.scopes(bearer)
    if #scopes == 0 then scopes = want end
    local token, ttl_or_err, tcode = self:token(bearer.params, scopes)
    if not token then return nil, ttl_or_err, tcode or "auth" end
    local entry = { value = token, expires = os.time() + math.max((ttl_or_err or 60) - 5, 1) }
    self.tokens[key] = entry
    self.tokens[scope_key(scopes)] = entry
    auth = "Bearer " .. token
  elseif basic then
    local creds, cerr = self:creds()
    if cerr then return nil, cerr end
    if not creds or not creds.username then
      return nil, string.format("registry %s requires a login and no credentials were found for it "
        .. "(looked in %s): run 'docker login %s' or 'podman login %s'", self.registry,
        table.concat(M.auth_files { env = self.env }, ", "), self.registry, self.registry), "auth"
    end
    self.basic = "Basic " .. crypto.base64(creds.username .. ":" .. (creds.password or ""))
    auth = self.basic
  else
    return nil, string.format("registry %s: unsupported authentication scheme %s", self.registry,
      challenges[1].scheme), "auth"
  end
  res, err, code = attempt(auth)
  if res and res.status == 401 then
    self.basic, self.tokens[key] = nil, nil
    return nil, string.format("registry %s: authentication failed%s", self.registry, self:who()), "auth"
  end
  return res, err, code
end

local function http_error(self, what, res)
  local detail = ""
  local doc = json.decode(res.body or "")
  if type(doc) == "table" and type(doc.errors) == "table" and type(doc.errors[1]) == "table" then
    detail = ": " .. tostring(doc.errors[1].code or "") .. " " .. tostring(doc.errors[1].message or "")
  end
  return string.format("registry %s: %s answered HTTP %d%s", self.registry, what, res.status, detail)
end

--- GET /v2/: true when the registry answers (after authentication), else nil, message, code.
function Client:ping()
  local res, err, code = self:request("/v2/")
  if not res then return nil, err, code end
  if res.status ~= 200 then return nil, http_error(self, "/v2/", res) end
  return true
end

--- The manifest of repository:reference (a tag or a digest). opts.method "HEAD" (default)
-- or "GET" (then `body` is the manifest and its digest is checked).
-- Returns {digest=, media_type=, size=, body=} or nil, message, code ("not_found" for 404).
function Client:manifest(repository, reference, opts)
  opts = opts or {}
  local method = opts.method or "HEAD"
  local path = string.format("/v2/%s/manifests/%s", repository, reference)
  local res, err, code = self:request(path, { method = method, headers = { Accept = M.ACCEPT },
    scope = "repository:" .. repository .. ":pull" })
  if not res then return nil, err, code end
  local what = string.format("manifest %s:%s", repository, reference)
  if res.status == 404 then
    return nil, string.format("registry %s has no %s", self.registry, what), "not_found"
  end
  if res.status ~= 200 then return nil, http_error(self, what, res), "http" end
  local digest = res.headers["docker-content-digest"]
  if method == "HEAD" and not digest then
    return self:manifest(repository, reference, { method = "GET" })
  end
  local m = { digest = digest, media_type = res.headers["content-type"],
    size = tonumber(res.headers["content-length"]) }
  if method ~= "HEAD" then
    m.body, m.size = res.body, #res.body
    local computed = "sha256:" .. crypto.digest("sha256", res.body)
    if digest and digest:match("^sha256:") and digest ~= computed then
      return nil, string.format("registry %s: %s has digest %s but its content hashes to %s", self.registry,
        what, digest, computed), "digest"
    end
    m.digest = digest or computed
  end
  return m
end

--- Upload a blob (the data as a string); returns its digest or nil, message.
function Client:put_blob(repository, data)
  local digest = "sha256:" .. crypto.digest("sha256", data)
  local scope = "repository:" .. repository .. ":pull,push"
  local res, err, code = self:request(string.format("/v2/%s/blobs/uploads/", repository),
    { method = "POST", scope = scope })
  if not res then return nil, err, code end
  if res.status ~= 202 or not res.headers.location then return nil, http_error(self, "blob upload", res) end
  local loc = res.headers.location
  local path = loc:match("^https?://[^/]+(/.*)$") or loc
  path = path .. (path:find("?", 1, true) and "&" or "?") .. "digest=" .. urlencode(digest)
  res, err, code = self:request(path, { method = "PUT", body = data, scope = scope,
    headers = { ["Content-Type"] = "application/octet-stream" } })
  if not res then return nil, err, code end
  if res.status ~= 201 then return nil, http_error(self, "blob upload", res) end
  return digest
end

--- Store a manifest under a tag or digest; returns the digest the registry reports, or nil, message.
function Client:put_manifest(repository, reference, body, media_type)
  local res, err, code = self:request(string.format("/v2/%s/manifests/%s", repository, reference), {
    method = "PUT", body = body, scope = "repository:" .. repository .. ":pull,push",
    headers = { ["Content-Type"] = media_type or "application/vnd.oci.image.manifest.v1+json" } })
  if not res then return nil, err, code end
  if res.status ~= 201 then return nil, http_error(self, "manifest " .. repository .. ":" .. reference, res) end
  return res.headers["docker-content-digest"] or ("sha256:" .. crypto.digest("sha256", body))
end

return M
