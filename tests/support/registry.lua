--- A real docker-registry (CNCF distribution) on a free loopback port, in one of three
-- authentication modes, for specs and the demo:
--
--   local registry = require "support.registry"
--   local reg = registry.start("bearer", { user = "bot", password = "s3cret" })
--   ... reg.host ("127.0.0.1:PORT"), reg.url, reg.user, reg.password, reg.token_log ...
--   reg:stop()
--
-- Modes: "none" (no auth), "basic" (htpasswd with bcrypt), "bearer" (the registry's
-- `silly` auth answers with real Bearer challenges; a small token endpoint run here
-- checks the user's password or identity token before it hands out a token).
local T = require "support.t"

local M = {}

-- The token endpoint: GET with Basic auth (docker's flow) or POST with a refresh token
-- (identity tokens). Every request is logged as one JSON line.
local TOKEN_SERVER = [[
import base64, json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

port, user, password, identity, logfile = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
count = [0]

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def answer(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def record(self, entry):
        with open(logfile, "a") as f: f.write(json.dumps(entry) + "\n")
    def token(self, entry):
        count[0] += 1
        entry["ok"] = True
        self.record(entry)
        t = "token-%d" % count[0]
        self.answer(200, {"token": t, "access_token": t, "expires_in": 300})
    def do_GET(self):
        u = urlparse(self.path); q = parse_qs(u.query)
        entry = {"method": "GET", "service": q.get("service", [None])[0], "scopes": q.get("scope", []),
                 "account": q.get("account", [None])[0], "user": None}
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            got = base64.b64decode(auth[6:]).decode()
            entry["user"] = got.split(":", 1)[0]
            if got != user + ":" + password:
                entry["ok"] = False; self.record(entry)
                return self.answer(401, {"details": "bad credentials"})
        elif user:
            entry["ok"] = False; self.record(entry)
            return self.answer(401, {"details": "credentials required"})
        self.token(entry)
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(n).decode())
        entry = {"method": "POST", "grant_type": form.get("grant_type", [None])[0],
                 "service": form.get("service", [None])[0], "scopes": form.get("scope", [""])[0].split()}
        if not identity or form.get("refresh_token", [None])[0] != identity:
            entry["ok"] = False; self.record(entry)
            return self.answer(401, {"details": "bad refresh token"})
        self.token(entry)

s = ThreadingHTTPServer(("127.0.0.1", port), H)
s.daemon_threads = True
s.serve_forever()
]]

local Registry = {}
Registry.__index = Registry

--- Start a registry. opts: {user=, password=, identity_token= (bearer only), dir=,
-- tls = true (https with a fresh self-signed certificate for 127.0.0.1: reg.ca)}.
-- Returns the registry object; raises when it does not come up.
function M.start(mode, opts)
  opts = opts or {}
  mode = mode or "none"
  assert(mode == "none" or mode == "basic" or mode == "bearer", "mode is none, basic or bearer")
  -- its own directory, not T.tmpdir's: a spec's T.cleanup() must not pull it away mid-suite
  local dir, owned = opts.dir, false
  if not dir then
    dir, owned = T.sh("mktemp -d /tmp/moonops-registry.XXXXXX"):gsub("%s+$", ""), true
  end
  os.execute("mkdir -p " .. T.q(dir .. "/storage"))
  local port = T.free_port()
  local self = setmetatable({ mode = mode, dir = dir, port = port, host = "127.0.0.1:" .. port,
    url = "http://127.0.0.1:" .. port, user = opts.user, password = opts.password,
    identity_token = opts.identity_token, pids = {}, owned = owned }, Registry)
  local auth = ""
  if mode == "basic" then
    assert(self.user and self.password, "basic mode needs user and password")
    local line, ok = T.sh(string.format("printf '%%s\\n' %s | htpasswd -iBn %s", T.q(self.password), T.q(self.user)))
    assert(ok, "htpasswd failed (package apache2-utils)")
    T.write(dir .. "/htpasswd", line)
    auth = string.format("auth: {htpasswd: {realm: moonops-test, path: %s}}\n", dir .. "/htpasswd")
  elseif mode == "bearer" then
    self.token_port = T.free_port()
    self.token_log = dir .. "/token.log"
    T.write(self.token_log, "")
    T.write(dir .. "/token.py", TOKEN_SERVER)
    self.pids[#self.pids + 1] = T.spawn(string.format("exec python3 %s %d %s %s %s %s", T.q(dir .. "/token.py"),
      self.token_port, T.q(self.user or ""), T.q(self.password or ""), T.q(self.identity_token or ""),
      T.q(self.token_log)), dir .. "/token-server.log")
    self.realm = string.format("http://127.0.0.1:%d/token", self.token_port)
    auth = string.format("auth: {silly: {realm: %q, service: moonops-test}}\n", self.realm)
  end
  local tls = ""
  if opts.tls then
    self.ca, self.url = dir .. "/cert.pem", "https://" .. self.host
    local _, ok = T.sh(string.format("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
      .. "-keyout %s -out %s -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null",
      T.q(dir .. "/key.pem"), T.q(self.ca)))
    assert(ok, "openssl could not make a certificate")
    tls = string.format(", tls: {certificate: %s, key: %s}", self.ca, dir .. "/key.pem")
  end
  T.write(dir .. "/config.yml", string.format(
    "version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\n"
      .. "http: {addr: %q, secret: moonops-test%s}\n%s", dir .. "/storage", self.host, tls, auth))
  self.log = dir .. "/registry.log"
  self.pids[#self.pids + 1] = T.spawn("exec docker-registry serve " .. T.q(dir .. "/config.yml"), self.log)
  local up = T.wait_for(function()
    return T.port_open(port) and (not self.token_port or T.port_open(self.token_port))
  end, 20)
  if not up then
    local log = T.read(self.log) or ""
    self:stop()
    error("docker-registry did not start on " .. self.host .. ": " .. log)
  end
  return self
end

--- The token endpoint's requests so far, as a list of decoded JSON lines (bearer mode).
function Registry:token_requests()
  local json = require "moonops.json"
  local out = {}
  for line in (T.read(self.token_log or "") or ""):gmatch("[^\n]+") do out[#out + 1] = json.decode(line) end
  return out
end

--- A docker config.json for this registry's credentials in `dir` (for DOCKER_CONFIG).
function Registry:docker_config(dir, password)
  local b64 = T.sh(string.format("printf '%%s' %s | base64 -w0", T.q(self.user .. ":" .. (password or self.password))))
  T.write(dir .. "/config.json", string.format('{"auths": {"%s": {"auth": "%s"}}}', self.host, b64))
  return dir
end

-- Gone, or a zombie waiting for a parent that may never reap it (PID 1 in some containers).
local function gone(pid)
  local stat = T.read("/proc/" .. pid .. "/stat")
  return not stat or stat:match("^%d+ %b() (%a)") == "Z"
end

local function stop_process(pid)
  os.execute(string.format("kill -TERM %d 2>/dev/null", pid))
  for _ = 1, 100 do
    if gone(pid) then return end
    T.sleep(0.02)
  end
  os.execute(string.format("kill -KILL %d 2>/dev/null", pid))
end

function Registry:stop()
  for i = #self.pids, 1, -1 do stop_process(self.pids[i]) end
  self.pids = {}
  if self.owned then os.execute("rm -rf " .. T.q(self.dir)) end
end

return M
