--- Real git servers on loopback for tests, demos and benchmarks.
--
--   local gitserve = require "support.gitserve"
--   local srv = gitserve.daemon(base)                       -- git://, receive-pack enabled
--   local web = gitserve.http(base, {user = "bot", token = "tok123"})  -- smart HTTP + Basic auth
--   local ssh = gitserve.ssh(base)                          -- OpenSSH's sshd, a generated client key
--   srv.url("ws.git")   --> "git://127.0.0.1:<port>/ws.git"
--   web.url("ws.git")   --> "http://127.0.0.1:<port>/git/ws.git"
--   ssh.url("ws.git")   --> "ssh://<user>@127.0.0.1:<port><base>/ws.git"
--   srv.stop(); web.stop(); ssh.stop()
--
-- `base` is a directory of bare repositories (created by the caller). The servers
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

--- An idempotent stop function for a server process and its scratch directory.
local function stopper(pid, work)
  return function()
    if pid then
      T.kill(pid)
      pid = nil
      os.execute("rm -rf " .. T.q(work))
    end
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
  server.stop = stopper(pid, work)
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
  local _, ok = T.sh(string.format("printf '%%s\\n' %s | htpasswd -ic %s %s 2>/dev/null", T.q(token), T.q(htpasswd), T.q(user)))
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
  server.stop = stopper(pid, work)
  return server
end

local SSHD = "/usr/sbin/sshd"

--- LSAN_OPTIONS for a moonops process that uses ssh remotes: leak checking off. libgit2 1.5.1
-- leaks about 330 bytes per ssh connection (load_known_hosts clears two buffers instead of
-- freeing them, and the known_hosts list it loads is never freed: valgrind shows every lost
-- block under git_remote_connect_ext), and the sanitizer's short stacks end inside libgit2,
-- so no suppression can name it without hiding every other libgit2 leak. Other errors are
-- still caught.
M.SSH_LSAN_OPTIONS = (os.getenv("LSAN_OPTIONS") and (os.getenv("LSAN_OPTIONS") .. ":") or "") .. "detect_leaks=0"

local function have(cmd)
  local _, ok = T.sh("command -v " .. cmd .. " >/dev/null 2>&1")
  return ok
end

--- Generate an ssh key pair at `path` (and `path`.pub). opts: {type = "ed25519", passphrase = ""}.
-- (ssh-keygen takes the passphrase as an argument: use test values only.)
function M.keygen(path, opts)
  opts = opts or {}
  assert(have("ssh-keygen"), "ssh-keygen not found (package openssh-client)")
  os.execute("mkdir -p " .. T.q(path:match("^(.*)/[^/]*$") or "."))
  local out, ok = T.sh(string.format("ssh-keygen -q -t %s -N %s -C moonops-test -f %s 2>&1 </dev/null",
    opts.type or "ed25519", T.q(opts.passphrase or ""), T.q(path)))
  assert(ok, "ssh-keygen failed: " .. out)
  return path, path .. ".pub"
end

--- Start OpenSSH's sshd on 127.0.0.1 and a free port, serving the repositories under `base_dir`
-- to the user running the tests (as root, root; otherwise sshd can only log in as its own user).
-- It has its own host key, accepts only the keys in its own authorized_keys (a generated
-- ed25519 client key to begin with; `authorize(pubkey_path)` adds more), and runs the
-- git-upload-pack and git-receive-pack on PATH. opts: {log_level = "VERBOSE"} (VERBOSE logs
-- each refused key as "Failed publickey for ...").
-- Returns {url = fn(repo) (a name under base_dir, or an absolute path), port =, user =, key =,
--   pubkey =, known_hosts_line =, known_hosts = fn(home) (writes home/.ssh/known_hosts),
--   ssh_command = (for GIT_SSH_COMMAND), authorize = fn(pubkey_path), log =, stop = fn()}.
function M.ssh(base_dir, opts)
  opts = opts or {}
  local rfd = io.open(SSHD, "r")
  if not rfd then error("sshd not found at " .. SSHD .. " (package openssh-server)", 2) end
  rfd:close()
  assert(have("ssh-keygen") and have("ssh"), "ssh-keygen or ssh not found (package openssh-client)")
  local work = scratch()
  local user = T.sh("id -un"):gsub("%s+$", "")
  if T.sh("id -u"):gsub("%s+$", "") == "0" then
    -- sshd started by root separates privileges into this directory and refuses to start without it
    os.execute("mkdir -p /run/sshd && chmod 755 /run/sshd")
  end
  local host_key = M.keygen(work .. "/host_ed25519")
  local key, pubkey = M.keygen(work .. "/client_ed25519")
  local authorized = work .. "/authorized_keys"
  T.write(authorized, T.read(pubkey))
  os.execute("mkdir -p " .. T.q(work .. "/home"))
  local port = T.free_port()
  local conf = work .. "/sshd_config"
  T.write(conf, table.concat({
    "Port " .. port,
    "ListenAddress 127.0.0.1",
    "HostKey " .. host_key,
    "AuthorizedKeysFile " .. authorized,
    "PubkeyAuthentication yes",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "PermitRootLogin prohibit-password",
    "StrictModes no",
    "UsePAM no",
    "PidFile " .. work .. "/sshd.pid",
    "LogLevel " .. (opts.log_level or "VERBOSE"),
    -- the server side of git runs with no system config and a private HOME, as the other servers here
    "SetEnv GIT_CONFIG_NOSYSTEM=1 HOME=" .. work .. "/home",
    "",
  }, "\n"))
  local log = work .. "/sshd.log"
  local pid = T.spawn(string.format("exec %s -D -e -f %s", SSHD, T.q(conf)), log)
  wait_listening(port, pid, log, "sshd")
  local host_pub = T.read(host_key .. ".pub"):match("^(%S+ %S+)")
  local line = string.format("[127.0.0.1]:%d %s", port, host_pub)
  T.write(work .. "/known_hosts", line .. "\n")
  local server = { port = port, user = user, key = key, pubkey = pubkey, known_hosts_line = line, log = log,
    base = base_dir }
  server.ssh_command = string.format("ssh -i %s -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes "
    .. "-o StrictHostKeyChecking=yes -o UserKnownHostsFile=%s", key, work .. "/known_hosts")
  function server.url(repo)
    local path = repo:sub(1, 1) == "/" and repo or (base_dir .. "/" .. repo)
    return string.format("ssh://%s@127.0.0.1:%d%s", user, port, path)
  end
  function server.known_hosts(home)
    os.execute("mkdir -p " .. T.q(home .. "/.ssh"))
    T.write(home .. "/.ssh/known_hosts", line .. "\n")
    return home .. "/.ssh/known_hosts"
  end
  function server.authorize(pub)
    local text = T.read(pub)
    assert(text, "no public key at " .. pub)
    local f = assert(io.open(authorized, "a"))
    f:write(text)
    f:close()
  end
  server.stop = stopper(pid, work)
  return server
end

return M
