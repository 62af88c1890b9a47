--- Test support shared by specs: temp dirs, running commands, free ports, waiting.
-- Uses only the Lua standard library and the shell, so it does not depend on the
-- primitives under test.
local T = {}

local root = debug.getinfo(1, "S").source:match("^@(.*)/tests/support/t%.lua$") or "."
T.root = root
T.bin = os.getenv("MOONOPS_BIN") or (root .. "/build/moonops")
T.fixtures = root .. "/../shared/fixtures"

--- Quote one word for sh.
function T.q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function argv_string(argv)
  local parts = {}
  for i, a in ipairs(argv) do parts[i] = T.q(a) end
  return table.concat(parts, " ")
end

--- Run a shell command; returns stdout (trailing newline kept), ok, exit code.
function T.sh(cmd)
  local f = assert(io.popen(cmd, "r"))
  local out = f:read("a")
  local ok, _, code = f:close()
  return out, ok == true, code
end

--- Read a whole file (nil if missing).
function T.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

--- Write a file, creating parent directories.
function T.write(path, text)
  local dir = path:match("^(.*)/[^/]*$")
  if dir then os.execute("mkdir -p " .. T.q(dir)) end
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

--- A new temporary directory; removed by T.cleanup() (call it in after_each / finally).
local made = {}
function T.tmpdir()
  local out = T.sh("mktemp -d /tmp/moonops-test.XXXXXX")
  local d = out:gsub("%s+$", "")
  made[#made + 1] = d
  return d
end

function T.cleanup()
  for _, d in ipairs(made) do os.execute("rm -rf " .. T.q(d)) end
  made = {}
end

--- Run argv (a list) with optional {cwd=, env={K=V}, stdin=string}.
-- Returns {code=, stdout=, stderr=}.
function T.run(argv, opts)
  opts = opts or {}
  local tmp = os.tmpname()
  local cmd = {}
  if opts.cwd then cmd[#cmd + 1] = "cd " .. T.q(opts.cwd) .. " &&" end
  if opts.env then
    cmd[#cmd + 1] = "env"
    local sets = {} -- env wants every -u before the first NAME=VALUE
    for k, v in pairs(opts.env) do
      if v == false then
        cmd[#cmd + 1] = "-u " .. T.q(k)
      else
        sets[#sets + 1] = T.q(k .. "=" .. v)
      end
    end
    for _, s in ipairs(sets) do cmd[#cmd + 1] = s end
  end
  cmd[#cmd + 1] = argv_string(argv)
  if opts.stdin then
    T.write(tmp .. ".in", opts.stdin)
    cmd[#cmd + 1] = "<" .. T.q(tmp .. ".in")
  else
    cmd[#cmd + 1] = "</dev/null"
  end
  cmd[#cmd + 1] = "2>" .. T.q(tmp .. ".err")
  local out, _, code = T.sh(table.concat(cmd, " "))
  local err = T.read(tmp .. ".err") or ""
  os.remove(tmp)
  os.remove(tmp .. ".err")
  os.remove(tmp .. ".in")
  return { code = code, stdout = out, stderr = err }
end

--- Run the moonops binary with a list of arguments (see T.run for opts).
function T.moonops(args, opts)
  local argv = { T.bin }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return T.run(argv, opts)
end

--- A TCP port on 127.0.0.1 that was free a moment ago.
function T.free_port()
  local out = T.sh([[python3 -c 'import socket
s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()']])
  return assert(tonumber(out), "no free port")
end

--- Sleep for `s` seconds (fractions allowed).
function T.sleep(s)
  os.execute(string.format("sleep %.3f", s))
end

--- Poll fn() until it returns a truthy value or `timeout` seconds pass; returns its value.
function T.wait_for(fn, timeout, interval)
  timeout, interval = timeout or 10, interval or 0.05
  local deadline = os.time() + timeout
  repeat
    local v = fn()
    if v then return v end
    T.sleep(interval)
  until os.time() > deadline
  return nil
end

--- Start a background process (sh command); returns its pid. Output goes to `log`.
function T.spawn(cmd, log)
  local out = T.sh(string.format("(%s) >%s 2>&1 </dev/null & echo $!", cmd, T.q(log or "/dev/null")))
  local pid = assert(tonumber(out), "could not start: " .. cmd)
  return pid
end

--- True while process `pid` exists and is not a zombie (nothing here may reap orphans).
function T.alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then return false end
  local stat = f:read("a") or ""
  f:close()
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z"
end

--- Stop a background process started with T.spawn (TERM, then KILL).
function T.kill(pid, sig)
  if not pid then return end
  os.execute(string.format("kill -%s %d 2>/dev/null", sig or "TERM", pid))
  for _ = 1, 50 do
    if not T.alive(pid) then return end
    T.sleep(0.05)
  end
  os.execute(string.format("kill -KILL %d 2>/dev/null", pid))
end

--- True when a TCP port on 127.0.0.1 accepts connections.
function T.port_open(port)
  local _, ok = T.sh(string.format("bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d' 2>/dev/null", port))
  return ok
end

return T
