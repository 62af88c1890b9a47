--- A running `moonops serve` over a workspace repository on a real `git daemon`,
-- for the load, fault, security and valgrind specs:
--
--   local server = require "support.server"
--   local s = server.setup({ hook = "sleep 1", env = { EXTRA = "x" } })
--   s.start()                         -- waits until the port answers
--   local sha = s.push("a.sql", "select 1;\n")
--   local status, doc = s.post_push(sha)          -- a signed GitHub push
--   s.db_rows("SELECT status FROM deployments")   -- read the state database
--   s.stop()                          -- TERM, then KILL; stops git daemon too
--
-- Every process is started with a private HOME and no system git config.
local T = require "support.t"
local gitserve = require "support.gitserve"
local crypto = require "moonops.crypto"
local json = require "moonops.json"
local store = require "moonops.store"

local M = {}

M.SECRET = "whsec-hardening-7f3a9c1e5b"
M.TOKEN = "api-token-hardening-4d8e2b6f"
M.WS_ID = "0e6f3c2a-9b1d-4f7e-8a5c-3d2b1a0f9e8d"

M.GIT_ENV = "GIT_CONFIG_NOSYSTEM=1 GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@example.com "
  .. "GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@example.com "

M.MELTANO = [[
version: 1
default_environment: dev
environments:
- name: dev
- name: prod
plugins:
  extractors:
  - name: tap-auth0
    config:
      domain: example.eu.auth0.com
]]

--- Run git in `dir`; returns its trimmed output, raises on failure.
function M.git(dir, args)
  local out, ok = T.sh("cd " .. T.q(dir) .. " && " .. M.GIT_ENV .. "HOME=" .. T.q(dir) .. " git " .. args .. " 2>&1")
  assert(ok, "git " .. args .. " failed: " .. out)
  return (out:gsub("%s+$", ""))
end

--- Resident set size of a process in kB (nil when it is gone).
function M.rss_kb(pid)
  local status = T.read("/proc/" .. pid .. "/status")
  return status and tonumber(status:match("VmRSS:%s*(%d+)"))
end

--- True while `pid` runs (a zombie counts as gone).
function M.alive(pid)
  local stat = T.read("/proc/" .. pid .. "/stat")
  return stat ~= nil and stat:match("^%d+ %b() (%a)") ~= "Z"
end

--- True when the moonops binary was built with AddressSanitizer.
function M.sanitized()
  local out = T.sh("ldd " .. T.q(T.bin) .. " 2>/dev/null")
  return out:find("libasan", 1, true) ~= nil
end

--- Signed GitHub push headers for `body` (a unique delivery id unless given).
local n = 0
function M.signed(body, opts)
  opts = opts or {}
  n = n + 1
  return {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = opts.event or "push",
    ["X-GitHub-Delivery"] = opts.delivery or ("hardening-" .. n .. "-" .. crypto.uuid()),
    ["X-Hub-Signature-256"] = "sha256=" .. crypto.hmac("sha256", opts.secret or M.SECRET, body),
  }
end

function M.push_payload(ref, after)
  return json.encode({ ref = ref, after = after, before = string.rep("0", 40), repository = { full_name = "org/ws" } })
end

--- opts: {hook = shell text run by the on_deploy hook, on_deploy = extra YAML lines,
--   workspace_yaml = extra lines for the workspace, server_yaml = extra lines under server:,
--   top_yaml = extra top-level lines, env = {K = V} for the server, keep_releases = n,
--   data_dir = path}
function M.setup(opts)
  opts = opts or {}
  local root = T.tmpdir()
  local s = { root = root, repos = root .. "/repos", src = root .. "/src", dir = root .. "/ops", opts = opts }
  os.execute("mkdir -p " .. T.q(s.repos) .. " " .. T.q(s.dir))
  M.git(root, "init -q --bare -b main " .. T.q(s.repos .. "/ws.git"))
  s.git = gitserve.daemon(s.repos)
  M.git(root, "init -q -b main " .. T.q(s.src))
  T.write(s.src .. "/meltano.yml", M.MELTANO)
  T.write(s.src .. "/hooks/hook.sh", "#!/bin/sh\n" .. (opts.hook or "true") .. "\n")
  os.execute("chmod +x " .. T.q(s.src .. "/hooks/hook.sh"))
  M.git(s.src, "add -A")
  M.git(s.src, "commit -q -m initial")
  M.git(s.src, "remote add origin " .. T.q(s.git.url("ws.git")))
  M.git(s.src, "push -q origin main")
  s.port = T.free_port()
  s.data = opts.data_dir or (s.dir .. "/data")
  s.ws_root = s.data .. "/workspaces/ws"
  s.url = "http://127.0.0.1:" .. s.port
  s.env = { HOME = root, GIT_CONFIG_NOSYSTEM = "1", TEST_WS_SECRET = M.SECRET,
    TEST_API_TOKENS = "other-token," .. M.TOKEN }
  for k, v in pairs(opts.env or {}) do s.env[k] = v end

  function s.write_config(repository)
    T.write(s.dir .. "/moonops.yml", table.concat({
      "data_dir: " .. s.data,
      "server:",
      "  listen: 127.0.0.1:" .. s.port,
      "  workers: 2",
      "  api_tokens_env: TEST_API_TOKENS",
      opts.server_yaml or "",
      "workspaces:",
      "  - id: " .. M.WS_ID,
      "    name: ws",
      "    repository: " .. (repository or s.git.url("ws.git")),
      "    secret_env: TEST_WS_SECRET",
      "    keep_releases: " .. (opts.keep_releases or 3),
      "    on_deploy:",
      "      - [./hooks/hook.sh]",
      opts.on_deploy or "",
      opts.workspace_yaml or "",
      opts.top_yaml or "",
      "",
    }, "\n"))
  end
  s.write_config()

  -- The server's environment goes through a file the shell sources, never onto a
  -- command line: secrets must not show up in `ps` because of the test itself.
  local function env_words()
    local lines = {}
    for k, v in pairs(s.env) do lines[#lines + 1] = "export " .. k .. "=" .. T.q(v) end
    table.sort(lines)
    local file = root .. "/server.env"
    T.write(file, table.concat(lines, "\n") .. "\n")
    os.execute("chmod 600 " .. T.q(file))
    return ". " .. T.q(file) .. " && exec"
  end

  --- Start `moonops [global...] serve [args...]`; `prefix` (e.g. valgrind) goes before the binary.
  s.log = root .. "/serve.log"
  function s.start(sopts)
    sopts = sopts or {}
    local cmd = { "cd", T.q(s.dir), "&&", env_words(), sopts.prefix or "", T.q(T.bin) }
    for _, a in ipairs(sopts.global or {}) do cmd[#cmd + 1] = T.q(a) end
    cmd[#cmd + 1] = "serve"
    for _, a in ipairs(sopts.args or {}) do cmd[#cmd + 1] = T.q(a) end
    s.pid = T.spawn(table.concat(cmd, " "), sopts.log or s.log)
    local up = T.wait_for(function() return T.port_open(s.port) or not M.alive(s.pid) end, sopts.timeout or 30)
    assert(up and M.alive(s.pid), "moonops serve did not start: " .. (T.read(sopts.log or s.log) or ""))
    return s.pid
  end

  --- Start `moonops ARGS...` in the background in the ops directory; returns its pid.
  function s.spawn(args, log)
    local cmd = { "cd", T.q(s.dir), "&&", env_words(), T.q(T.bin) }
    for _, a in ipairs(args) do cmd[#cmd + 1] = T.q(a) end
    return T.spawn(table.concat(cmd, " "), log or "/dev/null")
  end

  --- Send `sig` and wait up to `timeout` seconds for the server to exit; true when it did.
  function s.signal_and_wait(sig, timeout)
    if not s.pid then return true end
    os.execute(string.format("kill -%s %d 2>/dev/null", sig, s.pid))
    local gone = T.wait_for(function() return not M.alive(s.pid) end, timeout or 30, 0.05)
    if gone then s.pid = nil end
    return gone ~= nil
  end

  function s.stop()
    if s.pid then T.kill(s.pid) end
    s.pid = nil
    s.git.stop()
  end

  --- Run the moonops CLI in the ops directory with the server's environment.
  function s.run(args, extra_env)
    local saved = {}
    for k, v in pairs(extra_env or {}) do saved[k], s.env[k] = s.env[k] or false, v end
    local cmd = { env_words(), T.q(T.bin) }
    for k, v in pairs(saved) do s.env[k] = v or nil end
    for _, a in ipairs(args) do cmd[#cmd + 1] = T.q(a) end
    return T.run({ "sh", "-c", table.concat(cmd, " ") }, { cwd = s.dir })
  end

  function s.push(path, text)
    T.write(s.src .. "/" .. path, text)
    M.git(s.src, "add -A")
    M.git(s.src, "commit -q -m " .. T.q("change " .. path))
    M.git(s.src, "push -q -f origin HEAD:main")
    return M.git(s.src, "rev-parse HEAD")
  end

  --- curl: {method=, path=, body=, headers={}} -> status, decoded JSON (or text), raw headers
  function s.request(r)
    local d = T.tmpdir()
    local args = { "curl -s -m 30 -X", r.method or "GET", "-D", T.q(d .. "/h"), "-o", T.q(d .. "/b"),
      "-w '%{http_code}'" }
    -- headers from a file (curl -H @file), so a token never shows in `ps`
    local lines = {}
    for k, v in pairs(r.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
    if #lines > 0 then
      T.write(d .. "/headers", table.concat(lines, "\n") .. "\n")
      args[#args + 1] = "-H @" .. T.q(d .. "/headers")
    end
    if r.body then
      T.write(d .. "/req", r.body)
      args[#args + 1] = "--data-binary @" .. T.q(d .. "/req")
    end
    args[#args + 1] = T.q(s.url .. r.path)
    local status = tonumber((T.sh(table.concat(args, " "))))
    local text = T.read(d .. "/b") or ""
    local raw = T.read(d .. "/h") or ""
    os.execute("rm -rf " .. T.q(d))
    return status, json.decode(text) or text, raw
  end

  s.hook_path = "/api/workspaces/" .. M.WS_ID .. "/deployments/github-webhook"

  --- POST a signed push of `sha` to main; returns status, doc.
  function s.post_push(sha, hopts)
    local body = M.push_payload("refs/heads/main", sha)
    return s.request({ method = "POST", path = s.hook_path, body = body, headers = M.signed(body, hopts) })
  end

  --- Rows from the state database (opened read-write beside the server; WAL).
  function s.db_rows(sql, ...)
    local db <close> = assert(store.open(s.data .. "/moonops.db", { busy_timeout = 10000 }))
    return db:rows(sql, ...)
  end

  --- Wait until no deployment is QUEUED or RUNNING; returns the deployments.
  function s.wait_idle(timeout)
    local rows
    T.wait_for(function()
      rows = s.db_rows("SELECT id, status, delivery, error FROM deployments ORDER BY id")
      for _, r in ipairs(rows) do
        if r.status == "QUEUED" or r.status == "RUNNING" then return false end
      end
      return true
    end, timeout or 60, 0.2)
    return rows
  end

  return s
end

return M
