-- moonops.http against real HTTP servers on loopback (python3's http.server).
local T = require "support.t"
local http = require "moonops.http"
local json = require "moonops.json"

-- A small HTTP/1.1 server: echo, redirects, statuses, big and slow bodies.
local SERVER = [[
import json, socketserver, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def send(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers: self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD": self.wfile.write(body)
    def any(self):
        u = urlparse(self.path); q = parse_qs(u.query); p = u.path
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if p == "/echo":
            peer = self.client_address[1] if isinstance(self.client_address, tuple) else "unix"
            out = {"method": self.command, "path": self.path, "body": body.decode("latin-1"),
                   "headers": {k.lower(): v for k, v in self.headers.items()}, "peer": peer}
            self.send(200, json.dumps(out).encode(), [("Content-Type", "application/json")])
        elif p == "/redirect":
            self.send(int(q.get("code", ["302"])[0]), b"moved", [("Location", q["to"][0])])
        elif p.startswith("/status/"):
            self.send(int(p[8:]), b"status body")
        elif p == "/big":
            self.send(200, b"x" * int(q["n"][0]))
        elif p == "/slow":
            time.sleep(3); self.send(200, b"late")
        elif p == "/dup":
            self.send(200, b"", [("X-Dup", "one"), ("X-Dup", "two"), ("X-Mixed-Case", "v")])
        elif p == "/loop":
            self.send(302, b"", [("Location", "/loop")])
        else:
            self.send(404, b"not found")
    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = any

class Unix(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

if sys.argv[1] == "unix":
    Unix(sys.argv[2], H).serve_forever()
else:
    s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), H)
    s.daemon_threads = True
    s.serve_forever()
]]

describe("moonops.http", function()
  local dir, pids, a, b, sock

  setup(function()
    dir = T.tmpdir()
    T.write(dir .. "/server.py", SERVER)
    local pa, pb = T.free_port(), T.free_port()
    sock = dir .. "/http.sock"
    pids = {
      (T.spawn(string.format("exec python3 %s tcp %d", T.q(dir .. "/server.py"), pa))),
      (T.spawn(string.format("exec python3 %s tcp %d", T.q(dir .. "/server.py"), pb))),
      (T.spawn(string.format("exec python3 %s unix %s", T.q(dir .. "/server.py"), T.q(sock)))),
    }
    assert(T.wait_for(function() return T.port_open(pa) and T.port_open(pb) end), "servers did not start")
    assert(T.wait_for(function() return select(2, T.sh("test -S " .. T.q(sock))) end), "unix server did not start")
    a = "http://127.0.0.1:" .. pa
    b = "http://127.0.0.1:" .. pb
  end)

  teardown(function()
    for _, pid in ipairs(pids or {}) do T.kill(pid) end
    T.cleanup()
  end)

  local function echo(res)
    assert.is_table(res)
    return assert(json.decode(res.body))
  end

  describe("a request", function()
    it("gets a body, a status, the effective URL and lower-cased headers", function()
      local res = assert(http.request { url = a .. "/echo?x=1" })
      assert.equal(200, res.status)
      assert.equal(a .. "/echo?x=1", res.url)
      assert.equal("application/json", res.headers["content-type"])
      local e = echo(res)
      assert.equal("GET", e.method)
      assert.equal("/echo?x=1", e.path)
      assert.matches("^moonops/", e.headers["user-agent"])
    end)

    it("joins repeated response headers with a comma", function()
      local res = assert(http.request { url = a .. "/dup" })
      assert.equal("one, two", res.headers["x-dup"])
      assert.equal("v", res.headers["x-mixed-case"])
      assert.is_nil(res.headers["X-Mixed-Case"])
      assert.equal("", res.body)
    end)

    it("returns error statuses as responses, not failures", function()
      local res = assert(http.request { url = a .. "/status/404" })
      assert.equal(404, res.status)
      assert.equal("status body", res.body)
      res = assert(http.request { url = a .. "/status/503" })
      assert.equal(503, res.status)
    end)

    it("sends the method, headers and a string body", function()
      local e = echo(assert(http.request {
        method = "put", url = a .. "/echo",
        headers = { ["Content-Type"] = "text/plain", ["X-Count"] = 3 },
        body = "hello\0world",
      }))
      assert.equal("PUT", e.method)
      assert.equal("hello\0world", e.body)
      assert.equal("text/plain", e.headers["content-type"])
      assert.equal("3", e.headers["x-count"])
      assert.is_nil(e.headers.expect)
    end)

    it("sends an empty body with Content-Length for POST and PUT without a body", function()
      local e = echo(assert(http.request { method = "POST", url = a .. "/echo" }))
      assert.equal("POST", e.method)
      assert.equal("0", e.headers["content-length"])
      e = echo(assert(http.request { method = "DELETE", url = a .. "/echo" }))
      assert.equal("DELETE", e.method)
    end)

    it("removes a default header given as false", function()
      local e = echo(assert(http.request { url = a .. "/echo", headers = { ["User-Agent"] = false } }))
      assert.is_nil(e.headers["user-agent"])
    end)

    it("uploads a file with body_file", function()
      local data = string.rep("0123456789", 20000)
      T.write(dir .. "/upload.bin", data)
      local e = echo(assert(http.request { method = "POST", url = a .. "/echo", body_file = dir .. "/upload.bin" }))
      assert.equal(#data, #e.body)
      assert.equal(data, e.body)
    end)

    it("makes a HEAD request without a body", function()
      local res = assert(http.request { method = "HEAD", url = a .. "/big?n=5000" })
      assert.equal(200, res.status)
      assert.equal("5000", res.headers["content-length"])
      assert.equal("", res.body)
    end)

    it("reuses the connection for the next request to the same server", function()
      local first = echo(assert(http.request { url = a .. "/echo" }))
      local second = echo(assert(http.request { url = a .. "/echo" }))
      assert.equal(first.peer, second.peer)
    end)

    it("talks HTTP over a unix socket", function()
      local e = echo(assert(http.request { url = "http://localhost/echo", unix_socket = sock }))
      assert.equal("unix", e.peer)
      assert.equal("localhost", e.headers.host)
    end)
  end)

  describe("output_file", function()
    it("writes a successful body to the file and not into memory", function()
      local path = dir .. "/out.bin"
      local res = assert(http.request { url = a .. "/big?n=70000", output_file = path })
      assert.equal(200, res.status)
      assert.is_nil(res.body)
      assert.equal(string.rep("x", 70000), T.read(path))
      assert.equal("", T.sh("ls " .. T.q(dir) .. " | grep tmp- || true"))
    end)

    it("keeps an error body in memory and leaves the file alone", function()
      local path = dir .. "/untouched.bin"
      local res = assert(http.request { url = a .. "/status/404", output_file = path })
      assert.equal(404, res.status)
      assert.equal("status body", res.body)
      assert.is_nil(T.read(path))
      assert.equal("", T.sh("ls " .. T.q(dir) .. " | grep tmp- || true"))
    end)

    it("fails naming the file when it cannot be written", function()
      local res, err, code = http.request { url = a .. "/big?n=10", output_file = dir .. "/missing/dir/f" }
      assert.is_nil(res)
      assert.equal("write", code)
      assert.matches("missing/dir/f", err, 1, true)
    end)
  end)

  describe("redirects", function()
    local function redirect(to, code)
      return a .. "/redirect?code=" .. (code or 302) .. "&to=" .. to:gsub("[:/?&=]", function(c)
        return string.format("%%%02X", c:byte())
      end)
    end

    it("are not followed unless asked", function()
      local res = assert(http.request { url = redirect(a .. "/echo") })
      assert.equal(302, res.status)
      assert.equal(a .. "/echo", res.headers.location)
      assert.equal("moved", res.body)
    end)

    it("keep credentials on the same host", function()
      local res = assert(http.request { url = redirect(a .. "/echo"), follow = true,
        headers = { Authorization = "Bearer same-host-token", Cookie = "c=1" } })
      local e = echo(res)
      assert.equal(a .. "/echo", res.url)
      assert.equal("Bearer same-host-token", e.headers.authorization)
      assert.equal("c=1", e.headers.cookie)
    end)

    it("drop Authorization, Cookie and URL credentials when the host changes", function()
      local url = redirect(b .. "/echo"):gsub("^http://", "http://user:pw@")
      local res = assert(http.request { url = url, follow = true,
        headers = { Authorization = "Bearer secret-token", Cookie = "c=1", ["X-Other"] = "kept" } })
      local e = echo(res)
      assert.equal(b .. "/echo", res.url)
      assert.is_nil(e.headers.authorization)
      assert.is_nil(e.headers.cookie)
      assert.equal("kept", e.headers["x-other"])
    end)

    it("do not get credentials back when the chain returns to the first host", function()
      -- a -> b -> a
      local res = assert(http.request { url = redirect(b .. "/redirect?to=" .. a .. "/echo"), follow = true,
        headers = { Authorization = "Bearer t" } })
      assert.equal(a .. "/echo", res.url)
      assert.is_nil(echo(res).headers.authorization)
    end)

    it("turn a POST into a GET on 303 and keep it on 307", function()
      local e = echo(assert(http.request { method = "POST", url = redirect(a .. "/echo", 303), body = "x",
        follow = true }))
      assert.equal("GET", e.method)
      assert.equal("", e.body)
      e = echo(assert(http.request { method = "POST", url = redirect(a .. "/echo", 307), body = "payload",
        follow = true }))
      assert.equal("POST", e.method)
      assert.equal("payload", e.body)
    end)

    it("stop after the given number of hops", function()
      local res, err, code = http.request { url = a .. "/loop", follow = 3 }
      assert.is_nil(res)
      assert.equal("redirects", code)
      assert.matches("too many redirects", err)
      res = assert(http.request { url = redirect(a .. "/echo"), follow = 1 })
      assert.equal(200, res.status)
    end)
  end)

  describe("failures", function()
    it("name the URL without credentials or query", function()
      local port = T.free_port()
      local res, err, code = http.request { url = "http://bob:hunter22@127.0.0.1:" .. port .. "/v2/?token=abc" }
      assert.is_nil(res)
      assert.equal("connect", code)
      assert.matches("^GET http://127%.0%.0%.1:" .. port .. "/v2/: ", err)
      assert.not_matches("hunter22", err)
      assert.not_matches("abc", err)
      assert.not_matches("bob", err)
    end)

    it("time out", function()
      local res, err, code = http.request { url = a .. "/slow", timeout = 0.2 }
      assert.is_nil(res)
      assert.equal("timeout", code)
      assert.matches("GET " .. a .. "/slow", err, 1, true)
    end)

    it("refuse a body larger than max_body", function()
      local res, err, code = http.request { url = a .. "/big?n=5000", max_body = 100 }
      assert.is_nil(res)
      assert.equal("too_large", code)
      assert.matches("max_body", err)
      assert.equal(200, assert(http.request { url = a .. "/big?n=100", max_body = 100 }).status)
    end)

    it("refuse schemes other than http and https", function()
      local res, _, code = http.request { url = "file:///etc/passwd" }
      assert.is_nil(res)
      assert.equal("url", code)
    end)

    it("report an unreadable body_file", function()
      local res, err = http.request { method = "PUT", url = a .. "/echo", body_file = dir .. "/nope" }
      assert.is_nil(res)
      assert.matches("read .*/nope: No such file", err)
    end)

    it("raise on misuse", function()
      assert.has_error(function() http.request() end)
      assert.has_error(function() http.request { method = "GET" } end, "option 'url' is required")
      assert.has_error(function() http.request { url = a, method = "GET /x" } end)
      assert.has_error(function() http.request { url = a, headers = { ["X-A"] = "1\r\nX-Injected: 1" } } end)
      assert.has_error(function() http.request { url = a, headers = { ["Bad Name"] = "1" } } end)
      assert.has_error(function() http.request { url = a, body = "x", body_file = "/etc/hosts" } end)
      assert.has_error(function() http.request { url = a, progress = 1 } end)
      assert.has_error(function() http.request { url = a, follow = "yes" } end)
    end)
  end)

  describe("the progress callback", function()
    it("sees the transfer grow to its total", function()
      local last = 0
      local res = assert(http.request { url = a .. "/big?n=300000", progress = function(total, now)
        assert(now <= total or total == 0)
        last = now
      end })
      assert.equal(300000, #res.body)
      assert.equal(300000, last)
    end)

    it("aborts the transfer with its error", function()
      local res, err, code = http.request { url = a .. "/big?n=300000", output_file = dir .. "/aborted",
        progress = function() error("stop right here") end }
      assert.is_nil(res)
      assert.equal("aborted", code)
      assert.matches("stop right here", err)
      assert.is_nil(T.read(dir .. "/aborted"))
    end)

    it("may make a request of its own", function()
      local inner
      local res = assert(http.request { url = a .. "/echo", progress = function()
        if not inner then inner = assert(http.request { url = b .. "/echo" }).status end
      end })
      assert.equal(200, res.status)
      assert.equal(200, inner)
      assert.equal(200, assert(http.request { url = a .. "/echo" }).status)
    end)
  end)

  describe("parse_url and redact_url", function()
    it("split a URL into its parts with the default port", function()
      local u = assert(http.parse_url("https://me:p%40ss@registry.example.com/v2/a/b?scope=x#f"))
      assert.same({ scheme = "https", user = "me", password = "p@ss", host = "registry.example.com", port = 443,
        path = "/v2/a/b", query = "scope=x", fragment = "f" }, u)
      assert.equal(5000, http.parse_url("http://127.0.0.1:5000").port)
      local bad, err = http.parse_url("http://[::1")
      assert.is_nil(bad)
      assert.is_string(err)
    end)

    it("redact credentials, query and fragment", function()
      assert.equal("https://h.example/x", http.redact_url("https://u:secret@h.example/x?sig=abc#frag"))
    end)
  end)
end)
