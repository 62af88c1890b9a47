--- Real git servers on loopback for tests, demos and benchmarks.
--
--   local gitserve = require "support.gitserve"
--   local srv = gitserve.daemon(base)                       -- git://, receive-pack enabled
--   local web = gitserve.http(base, {user = "bot", token = "tok123"})  -- smart HTTP + Basic auth
--   srv.url("ws.git")   --> "git://127.0.0.1:<port>/ws.git"
--   web.url("ws.git")   --> "http://127.0.0.1:<port>/git/ws.git"
--   srv.stop(); web.stop()
--
-- `base` is a directory of bare repositories (created by the caller). Both servers
-- run with GIT_CONFIG_NOSYSTEM=1 and a private HOME so the host's git config
-- does not leak in. `stop` is idempotent; call it in a `finally`.
local T = require "support.t"

local M = {}

local function scratch()
  local out = T.sh("mktemp -d /tmp/moonops-gitserve.XXXXXX")
  return (out:gsub("%s+$", ""))
end

local function wait_listening(port, pid, log, what)
  local up = T.wait_for(function() return T.port_open(port) end, 15)
  if not up then
    T.kill(pid)
    error(string.format("%s did not start on port %d: %s", what, port, T.read(log) or ""), 2)
  end
end

--- Environment prefix for server processes: no system config, a private HOME.
local function env_prefix(home)
  return string.format("env GIT_CONFIG_NOSYSTEM=1 HOME=%s ", T.q(home))
end

--- Start `git daemon` serving every repository under `base_dir` (fetch and push).
-- Returns {url = fn(repo), port =, stop = fn()}.
function M.daemon(base_dir)
  local work = scratch()
  local port = T.free_port()
  local log = work .. "/daemon.log"
  local cmd = string.format(
    "exec %sgit daemon --reuseaddr --listen=127.0.0.1 --port=%d --base-path=%s --export-all "
      .. "--enable=receive-pack --informative-errors %s",
    env_prefix(work), port, T.q(base_dir), T.q(base_dir))
  local pid = T.spawn(cmd, log)
  wait_listening(port, pid, log, "git daemon")
  local server = { port = port, base = base_dir, log = log }
  function server.url(repo)
    return string.format("git://127.0.0.1:%d/%s", port, repo)
  end
  function server.stop()
    if pid then
      T.kill(pid)
      pid = nil
      os.execute("rm -rf " .. T.q(work))
    end
  end
  return server
end

--- Start lighttpd + git http-backend over `base_dir` with Basic auth for one user.
-- opts: {user = "bot", token = "tok123"}. Returns {url = fn(repo), port =, stop = fn()}.
function M.http(base_dir, opts)
  opts = opts or {}
  local user, token = opts.user or "bot", opts.token or "tok123"
  local work = scratch()
  local port = T.free_port()
  local htpasswd = work .. "/htpasswd"
  local _, ok = T.sh(string.format("htpasswd -bc %s %s %s 2>/dev/null", T.q(htpasswd), T.q(user), T.q(token)))
  assert(ok, "htpasswd failed (package apache2-utils)")
  local conf = work .. "/lighttpd.conf"
  T.write(conf, table.concat({
    string.format('server.document-root = "%s"', base_dir),
    'server.bind = "127.0.0.1"',
    string.format("server.port = %d", port),
    'server.modules = ("mod_alias", "mod_cgi", "mod_setenv", "mod_auth", "mod_authn_file")',
    string.format('server.errorlog = "%s/error.log"', work),
    string.format('server.pid-file = "%s/lighttpd.pid"', work),
    'auth.backend = "htpasswd"',
    string.format('auth.backend.htpasswd.userfile = "%s"', htpasswd),
    'auth.require = ("/git/" => ("method" => "basic", "realm" => "git", "require" => "valid-user"))',
    'alias.url = ("/git/" => "/usr/lib/git-core/git-http-backend/")',
    '$HTTP["url"] =~ "^/git/" {',
    '  cgi.assign = ("" => "")',
    string.format('  setenv.add-environment = ("GIT_PROJECT_ROOT" => "%s", "GIT_HTTP_EXPORT_ALL" => "", '
      .. '"GIT_CONFIG_NOSYSTEM" => "1", "HOME" => "%s")', base_dir, work),
    "}",
    "",
  }, "\n"))
  local log = work .. "/lighttpd.out"
  local pid = T.spawn("exec lighttpd -D -f " .. T.q(conf), log)
  wait_listening(port, pid, log, "lighttpd")
  local server = { port = port, base = base_dir, user = user, token = token, log = work .. "/error.log" }
  function server.url(repo)
    return string.format("http://127.0.0.1:%d/git/%s", port, repo)
  end
  function server.stop()
    if pid then
      T.kill(pid)
      pid = nil
      os.execute("rm -rf " .. T.q(work))
    end
  end
  return server
end

return M
