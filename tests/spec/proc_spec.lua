local proc = require "moonops.proc"
local fs = require "moonops.fs"
local T = require "support.t"

describe("moonops.proc", function()
  after_each(function() T.cleanup() end)

  describe("run", function()
    it("captures exit code, stdout and stderr", function()
      local r = assert(proc.run { argv = { "sh", "-c", "echo out; echo err >&2; exit 3" } })
      assert.equal(3, r.code)
      assert.equal("out\n", r.stdout)
      assert.equal("err\n", r.stderr)
      assert.is_false(r.timed_out)
      assert.is_nil(r.signal)
      assert.is_number(r.pid)
    end)

    it("passes arguments verbatim, never through a shell", function()
      local r = assert(proc.run { argv = { "printf", "%s|", "a b", "$HOME", "*", "'q'", 42 } })
      assert.equal("a b|$HOME|*|'q'|42|", r.stdout)
    end)

    it("feeds stdin and runs in cwd", function()
      local d = T.tmpdir()
      local r = assert(proc.run { argv = { "sh", "-c", "pwd; cat" }, cwd = d, stdin = "in\0put" })
      assert.equal(fs.realpath(d) .. "\nin\0put", r.stdout)
      r = assert(proc.run { argv = { "cat" } })
      assert.equal("", r.stdout) -- no stdin: /dev/null, so cat ends at once
    end)

    it("merges env over the current environment; false removes a variable", function()
      local r = assert(proc.run {
        argv = { "sh", "-c", 'echo "$MO_A|${HOME-unset}|$MO_N|${PATH:+path}"' },
        env = { MO_A = "x y", HOME = false, MO_N = 7 },
      })
      assert.equal("x y|unset|7|path\n", r.stdout)
    end)

    it("starts from nothing with clear_env", function()
      local r = assert(proc.run { argv = { "/usr/bin/env" }, clear_env = true, env = { ONLY = "1" } })
      assert.equal("ONLY=1\n", r.stdout)
      r = assert(proc.run { argv = { "/usr/bin/env" }, clear_env = true })
      assert.equal("", r.stdout)
    end)

    it("looks the command up on the child's PATH", function()
      local d = T.tmpdir()
      T.write(d .. "/mytool", "#!/bin/sh\necho mine\n")
      fs.chmod(d .. "/mytool", tonumber("755", 8))
      local r = assert(proc.run { argv = { "mytool" }, env = { PATH = d .. ":/usr/bin:/bin" } })
      assert.equal("mine\n", r.stdout)
      assert.is_nil((proc.run { argv = { "mytool" } }))
    end)

    it("runs a relative path from cwd", function()
      local d = T.tmpdir()
      T.write(d .. "/scripts/setup.sh", "#!/bin/sh\necho set up in $(pwd)\n")
      fs.chmod(d .. "/scripts/setup.sh", tonumber("755", 8))
      local r = assert(proc.run { argv = { "./scripts/setup.sh" }, cwd = d })
      assert.equal("set up in " .. fs.realpath(d) .. "\n", r.stdout)
      local _, err = proc.run { argv = { "./scripts/setup.sh" } }
      assert.equal("run ./scripts/setup.sh: command not found", err)
      T.write(d .. "/scripts/data.txt", "")
      _, err = proc.run { argv = { "scripts/data.txt" }, cwd = d }
      assert.equal("run scripts/data.txt: not an executable file", err)
    end)

    it("runs the command in its own process group", function()
      local r = assert(proc.run { argv = { "sh", "-c", "ps -o pgid= -p $$; echo $$" } })
      local pgid, pid = r.stdout:match("^%s*(%d+)%s+(%d+)")
      assert.equal(pid, pgid)
    end)

    it("reports a signal death the shell's way", function()
      local r = assert(proc.run { argv = { "sh", "-c", "kill -KILL $$" } })
      assert.equal(137, r.code)
      assert.equal("KILL", r.signal)
      assert.is_false(r.timed_out)
    end)

    it("returns nil, err when the command cannot start", function()
      local r, err = proc.run { argv = { "moonops-no-such-command" } }
      assert.is_nil(r)
      assert.equal("run moonops-no-such-command: command not found", err)
      r, err = proc.run { argv = { "/nonexistent/tool" } }
      assert.is_nil(r)
      assert.equal("run /nonexistent/tool: command not found", err)
      r, err = proc.run { argv = { "/etc/passwd" } }
      assert.is_nil(r)
      assert.equal("run /etc/passwd: not an executable file", err)
      r, err = proc.run { argv = { "true" }, cwd = "/nonexistent-dir" }
      assert.is_nil(r)
      assert.matches("^run true: cannot change directory to /nonexistent%-dir: ", err)
    end)

    it("times out: TERM to the group, then KILL after the grace period", function()
      local r = assert(proc.run { argv = { "sleep", "30" }, timeout = 0.2 })
      assert.is_true(r.timed_out)
      assert.equal("TERM", r.signal)
      r = assert(proc.run { argv = { "sh", "-c", "trap '' TERM; echo ready; sleep 30" }, timeout = 0.2, grace = 0.2 })
      assert.is_true(r.timed_out)
      assert.equal("KILL", r.signal)
      assert.equal("ready\n", r.stdout)
    end)

    it("leaves no grandchild behind after a timeout", function()
      local r = assert(proc.run { argv = { "sh", "-c", "sleep 30 & echo $!; wait" }, timeout = 0.3 })
      local pid = assert(tonumber(r.stdout:match("%d+")))
      assert.truthy(T.wait_for(function() return not proc.alive(pid) end, 10))
    end)

    it("streams output to on_output as it arrives", function()
      -- the command waits for a file the callback creates: proof that chunks arrive while it runs
      local d = T.tmpdir()
      local chunks = {}
      local wait_go = "while [ ! -e " .. d .. "/go ]; do sleep 0.01; done; "
      local r = assert(proc.run {
        argv = { "sh", "-c", "echo one; " .. wait_go .. "echo two >&2" },
        on_output = function(stream, chunk)
          chunks[#chunks + 1] = stream .. ":" .. chunk
          fs.write(d .. "/go", "")
        end,
        timeout = 20,
      })
      assert.is_false(r.timed_out)
      assert.same({ "stdout:one\n", "stderr:two\n" }, chunks)
      assert.equal("one\n", r.stdout)
      assert.equal("two\n", r.stderr)
    end)

    it("propagates an error raised by on_output and stops the command", function()
      local d = T.tmpdir()
      local ok, err = pcall(proc.run, {
        argv = { "sh", "-c", "echo go; sleep 1; touch " .. d .. "/survived" },
        on_output = function() error("handler failed") end,
      })
      assert.is_false(ok)
      assert.matches("handler failed", err)
      proc.sleep(1.5)
      assert.is_false(fs.exists(d .. "/survived"))
    end)

    it("keeps at most max_output bytes of each stream", function()
      local r = assert(proc.run { argv = { "sh", "-c", "echo 0123456789; echo abc >&2" }, max_output = 4 })
      assert.equal("0123", r.stdout)
      assert.equal("abc\n", r.stderr)
      assert.is_true(r.stdout_truncated)
      assert.is_nil(r.stderr_truncated)
    end)

    it("raises on misuse", function()
      assert.has_error(function() proc.run() end)
      assert.has_error(function() proc.run { "ls" } end, "option 'argv' must be a list")
      assert.has_error(function() proc.run { argv = {} } end, "option 'argv' must not be empty")
      assert.has_error(function() proc.run { argv = { "echo", {} } } end, "argv[2] must be a string")
      assert.has_error(function() proc.run { argv = { "true" }, env = "A=1" } end)
      assert.has_error(function() proc.run { argv = { "true" }, env = { A = {} } } end)
      assert.has_error(function() proc.run { argv = { "true" }, env = { ["A=B"] = "1" } } end)
      assert.has_error(function() proc.run { argv = { "true" }, timeout = -1 } end)
      assert.has_error(function() proc.run { argv = { "true" }, stdin = {} } end)
      assert.has_error(function() proc.run { argv = { "true" }, on_output = "print" } end)
      assert.has_error(function() proc.run { argv = { "true" }, max_output = -1 } end)
    end)
  end)

  describe("spawn", function()
    it("starts a background process and waits for it", function()
      local d = T.tmpdir()
      local p = assert(proc.spawn { argv = { "sh", "-c", "echo out; echo err >&2; exit 5" },
        stdout = d .. "/log", stderr = d .. "/log" })
      assert.is_number(p:pid())
      local code, sig = p:wait()
      assert.equal(5, code)
      assert.is_nil(sig)
      assert.equal(5, (p:wait())) -- asking again gives the same answer
      local log = fs.read(d .. "/log")
      assert.truthy(log:match("out\n") and log:match("err\n"))
      p:close()
    end)

    it("wait with a timeout returns nil while it runs; kill stops the group", function()
      local d = T.tmpdir()
      local p = assert(proc.spawn { argv = { "sh", "-c", "sleep 30 & echo $!; wait" }, stdout = d .. "/out" })
      assert.is_nil(p:wait(0.1))
      local child = assert(T.wait_for(function() return tonumber(fs.read(d .. "/out") or "") end, 10))
      assert.is_true(p:kill())
      local code, sig = p:wait(10)
      assert.equal(143, code)
      assert.equal("TERM", sig)
      assert.truthy(T.wait_for(function() return not proc.alive(child) end, 10))
      local ok, err = p:kill()
      assert.is_nil(ok)
      assert.matches("has exited", err)
    end)

    it("closing a running process kills and reaps it", function()
      local pid
      do
        local p <close> = assert(proc.spawn { argv = { "sleep", "30" } })
        pid = p:pid()
        assert.is_true(proc.alive(pid))
      end
      assert.is_false(proc.alive(pid))
    end)

    it("raises after close", function()
      local p = assert(proc.spawn { argv = { "true" } })
      p:wait()
      p:close()
      p:close()
      assert.has_error(function() p:pid() end, "use of a closed process")
      assert.has_error(function() p:wait() end, "use of a closed process")
      assert.has_error(function() p:kill() end, "use of a closed process")
    end)

    it("returns nil, err when it cannot start or open its log", function()
      local p, err = proc.spawn { argv = { "moonops-no-such-command" } }
      assert.is_nil(p)
      assert.equal("spawn moonops-no-such-command: command not found", err)
      p, err = proc.spawn { argv = { "true" }, stdout = "/nonexistent/dir/log" }
      assert.is_nil(p)
      assert.matches("^spawn true: open /nonexistent/dir/log: ", err)
      assert.has_error(function() proc.spawn { argv = { "true" }, stdout = {} } end)
      local q = assert(proc.spawn { argv = { "sleep", "5" } })
      assert.has_error(function() q:kill("NOPE") end, "bad argument #1 to 'kill' (unknown signal 'NOPE')")
      q:close()
    end)
  end)

  describe("when moonops itself is stopped", function()
    -- A script for `moonops lua -e`: a background process (proc.spawn), then a command
    -- (proc.run) whose shell starts a grandchild that ignores INT and TERM. Each writes
    -- its pid into dir. Only SIGKILL stops that grandchild.
    local function script(dir)
      return string.format([[
local proc = require "moonops.proc"
local bg = assert(proc.spawn { argv = { "sleep", "60" } })
local f = assert(io.open(%q, "w")); f:write(bg:pid()); f:close()
proc.run { argv = { "sh", "-c", %q } }
]], dir .. "/spawned", "echo $$ > " .. dir .. "/hook.tmp; mv " .. dir .. "/hook.tmp " .. dir .. "/hook; "
        .. "(trap '' INT TERM; exec sleep 60) & echo $! > " .. dir .. "/child.tmp; mv " .. dir .. "/child.tmp "
        .. dir .. "/child; wait")
    end

    -- Start the script in its own moonops process (default signal handling, as at a
    -- terminal) and wait until all three pids are written.
    local function start(dir)
      local p = assert(proc.spawn { argv = { T.bin, "lua", "-e", script(dir) }, stderr = dir .. "/stderr" })
      local pids = T.wait_for(function()
        local spawned, hook, child = T.read(dir .. "/spawned"), T.read(dir .. "/hook"), T.read(dir .. "/child")
        if spawned and hook and child then return { tonumber(spawned), tonumber(hook), tonumber(child) } end
      end, 20)
      assert(pids, "the script did not start its commands: " .. (T.read(dir .. "/stderr") or ""))
      return p, pids
    end

    local function all_gone(pids)
      return T.wait_for(function()
        for _, pid in ipairs(pids) do
          if proc.alive(pid) then return false end
        end
        return true
      end, 5)
    end

    for _, case in ipairs({ { "INT", 130 }, { "TERM", 143 }, { "HUP", 129 } }) do
      local sig, code = case[1], case[2]
      it("forwards SIG" .. sig .. " to its commands and their children, then exits " .. code, function()
        local dir = T.tmpdir()
        local p, pids = start(dir)
        finally(function()
          for _, pid in ipairs(pids) do proc.kill(pid, "KILL") end
          p:close()
        end)
        local t0 = proc.monotonic()
        assert.is_true(p:kill(sig)) -- the whole group, as Ctrl-C at a terminal does
        local got, name = p:wait(20)
        assert.equal(code, got)
        assert.equal(sig, name)
        assert.is_true(all_gone(pids), "a command outlived moonops")
        assert.is_true(proc.monotonic() - t0 < 10)
      end)
    end

    it("still exits at once on a signal when no command is running", function()
      local p = assert(proc.spawn { argv = { T.bin, "lua", "-e", "require('moonops.proc').sleep(30)" } })
      finally(function() p:close() end)
      proc.sleep(0.3)
      local t0 = proc.monotonic()
      p:kill("INT")
      assert.equal(130, (p:wait(10)))
      assert.is_true(proc.monotonic() - t0 < 2)
    end)

    it("keeps a signal ignored that it was started ignoring (nohup)", function()
      local dir = T.tmpdir()
      local p = assert(proc.spawn { argv = { "sh", "-c", "trap '' HUP; exec " .. T.q(T.bin)
        .. " lua -e \"require('moonops.proc').sleep(1.5) io.open('" .. dir .. "/done', 'w'):close()\"" } })
      finally(function() p:close() end)
      proc.sleep(0.3)
      p:kill("HUP")
      assert.equal(0, (p:wait(10)))
      assert.truthy(T.read(dir .. "/done"))
    end)
  end)

  describe("terminate_all", function()
    it("stops every running command: TERM, then KILL after the grace period", function()
      local n, child
      local t0 = proc.monotonic()
      local r = assert(proc.run {
        argv = { "sh", "-c", "(trap '' TERM; exec sleep 60) & echo $!; wait" },
        on_output = function(_, chunk)
          child = child or tonumber(chunk:match("%d+"))
          if child and not n then n = proc.terminate_all(0.5) end
        end,
        timeout = 30,
      })
      finally(function() if child then proc.kill(child, "KILL") end end)
      assert.equal(1, n)
      assert.equal("TERM", r.signal)
      assert.is_false(r.timed_out)
      assert.truthy(T.wait_for(function() return not proc.alive(child) end, 5))
      assert.is_true(proc.monotonic() - t0 < 10)
    end)

    it("leaves background processes from spawn alone and returns 0 when nothing runs", function()
      local p = assert(proc.spawn { argv = { "sleep", "30" } })
      finally(function() p:close() end)
      assert.equal(0, proc.terminate_all(0.1))
      assert.is_true(proc.alive(p:pid()))
      assert.has_error(function() proc.terminate_all(-1) end)
    end)
  end)

  describe("small things", function()
    it("which finds programs on PATH", function()
      assert.equal("/", proc.which("sh"):sub(1, 1))
      assert.matches("/sh$", proc.which("sh"))
      assert.is_nil(proc.which("moonops-no-such-command"))
      assert.is_nil(proc.which(""))
      assert.equal("/bin/sh", proc.which("/bin/sh"))
      assert.is_nil(proc.which("sh", "/nonexistent"))
      assert.has_error(function() proc.which() end)
    end)

    it("knows pid, time, hostname and the environment", function()
      assert.is_true(proc.pid() > 1)
      assert.is_true(math.abs(proc.time() - os.time()) < 2)
      local a = proc.monotonic()
      proc.sleep(0.05)
      assert.is_true(proc.monotonic() > a)
      assert.equal(T.sh("hostname"):gsub("%s+$", ""), proc.hostname())
      assert.equal(os.getenv("PATH"), proc.environ().PATH)
    end)

    it("kill and alive work by pid and signal name", function()
      local p = assert(proc.spawn { argv = { "sleep", "30" } })
      local pid = p:pid()
      assert.is_true(proc.alive(pid))
      assert.is_true(proc.kill(pid, 0))
      assert.is_true(proc.kill(pid, "SIGTERM"))
      assert.equal("TERM", select(2, p:wait()))
      assert.is_false(proc.alive(pid))
      local ok, err, code = proc.kill(pid, "TERM")
      assert.is_nil(ok)
      assert.matches("^kill %d+: ", err)
      assert.equal("ESRCH", code)
      assert.has_error(function() proc.kill(pid, "BOGUS") end)
      assert.has_error(function() proc.kill("x", "TERM") end)
      assert.has_error(function() proc.kill(pid) end)
      p:close()
    end)
  end)
end)
