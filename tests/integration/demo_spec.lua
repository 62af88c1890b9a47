-- `make demo` runs examples/demo.sh: the whole loop on loopback. The demo must exit 0,
-- narrate every step, stop every process it started (every one of them carries a
-- marker variable in its environment, so a leftover is found by reading /proc), remove
-- its temporary directory, and run again right after without tripping over the first run.
local T = require "support.t"

local DEMO = T.root .. "/examples/demo.sh"

-- Processes (other than zombies) whose environment holds MOONOPS_DEMO_MARK=<mark>.
local function marked(mark)
  local out = T.sh("grep -lsa 'MOONOPS_DEMO_MARK=" .. mark .. "' /proc/[0-9]*/environ 2>/dev/null")
  local pids = {}
  for pid in out:gmatch("/proc/(%d+)/environ") do
    if T.alive(pid) then pids[#pids + 1] = pid .. " " .. (T.read("/proc/" .. pid .. "/cmdline") or ""):gsub("%z", " ") end
  end
  return pids
end

-- The demo's command line (to run from T.root); `setsid` in front puts it in a session of its own.
local function demo_cmd(tmp, mark, bin, prefix)
  return string.format("cd %s && %senv TMPDIR=%s MOONOPS_DEMO_MARK=%s NO_COLOR=1 bash %s %s",
    T.q(T.root), prefix or "", T.q(tmp), mark, T.q(DEMO), T.q(bin or T.bin))
end

local function new_mark()
  return (T.sh("od -An -N6 -tx1 /dev/urandom"):gsub("%s", ""))
end

describe("make demo (examples/demo.sh)", function()
  after_each(T.cleanup)

  it("runs the whole loop twice in a row, exits 0, and leaves nothing behind", function()
    local tmp = T.tmpdir()
    for run = 1, 2 do
      local mark = new_mark()
      local out, ok, code = T.sh(demo_cmd(tmp, mark) .. " </dev/null 2>&1")
      assert.is_true(ok, string.format("run %d exited %s:\n%s", run, tostring(code), out))
      -- Every step of the loop happened, in the user's words.
      for _, want in ipairs({
        "moonops init ops --name demo",
        "HTTP 401 {\"error\":\"invalid X-Hub-Signature-256\"}",
        "HTTP 202 {",
        "COMPLETE    webhook",
        "(redacted)",
        "environment: prod (--environment)",
        "active environment is now staging",
        "configuration changes (environment staging):",
        "pushed ",
        "demo-staging deployment 2: COMPLETE",
        "demo deployment 3: COMPLETE",
        "up to date: demo main already contains",
        "nightly-image        0 2 * * *",
        "stopped moonops serve",
        "demo: done.",
      }) do
        assert.truthy(out:find(want, 1, true), string.format("run %d: %q missing from:\n%s", run, want, out))
      end
      local _, has_buildah = T.sh("command -v buildah")
      local _, has_registry = T.sh("command -v docker-registry")
      if has_buildah and has_registry and T.sh("test -x /bin/busybox && echo y"):match("y") then
        assert.truthy(out:find("is already in the registry: nothing to build", 1, true), out)
        assert.truthy(out:find("/example/pipelines@sha256:%x+"), out)
      else
        assert.truthy(out:find("skipped: this needs", 1, true), out)
      end
      -- No secret of the demo reaches its output.
      assert.falsy(out:find("demo-token-", 1, true))
      assert.same({}, marked(mark))
      assert.equal("", T.sh("ls -A " .. T.q(tmp)), "the demo left files in its temporary directory")
    end
  end)

  it("stops everything it started when it is interrupted half-way", function()
    local tmp = T.tmpdir()
    local mark = new_mark()
    local log = tmp .. "/../" .. mark .. ".log"
    T.sh(string.format("%s >%s 2>&1 </dev/null &", demo_cmd(tmp, mark, nil, "setsid "), T.q(log)))
    local started = T.wait_for(function()
      return (T.read(log) or ""):find("== 3.", 1, true)
    end, 60)
    assert.truthy(started, "the demo did not reach step 3:\n" .. (T.read(log) or ""))
    local running = marked(mark)
    assert.is_true(#running >= 3, "git daemon, moonops serve and the demo itself should be running")
    -- The demo is the marked bash running demo.sh whose parent is not marked.
    local pid
    for _, p in ipairs(running) do
      local id, cmd = p:match("^(%d+) (.*)$")
      local ppid = (T.read("/proc/" .. id .. "/stat") or ""):match("^%d+ %b() %a (%d+)")
      local parent_marked = (T.read("/proc/" .. tostring(ppid) .. "/environ") or ""):find("MOONOPS_DEMO_MARK=" .. mark, 1, true)
      if cmd:find("demo.sh", 1, true) and not parent_marked then pid = id end
    end
    assert.truthy(pid, "the demo's own process was not found among " .. table.concat(running, "; "))
    os.execute("kill -TERM " .. pid)
    assert.truthy(T.wait_for(function() return not T.alive(pid) end, 30), "the demo did not stop on SIGTERM")
    local text = T.read(log) or ""
    os.remove(log)
    assert.same({}, marked(mark))
    assert.equal("", T.sh("ls -A " .. T.q(tmp)), "the demo left files behind:\n" .. text)
    assert.truthy(text:find("demo: failed", 1, true), text)
  end)

  it("says what is missing when there is no moonops binary, and starts nothing", function()
    local tmp = T.tmpdir()
    local mark = new_mark()
    local out, ok = T.sh(demo_cmd(tmp, mark, tmp .. "/no/moonops") .. " </dev/null 2>&1")
    assert.is_false(ok)
    assert.truthy(out:find("no moonops binary at " .. tmp .. "/no/moonops", 1, true), out)
    assert.same({}, marked(mark))
    assert.equal("", T.sh("ls -A " .. T.q(tmp)))
  end)
end)
