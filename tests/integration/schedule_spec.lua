-- Schedules through the real binary: locks between real processes, the real crontab,
-- run records in the store, a custom Lua recipe as the scheduled job.
local T = require "support.t"
local json = require "moonops.json"

local CONFIG = [[
data_dir: .moonops
schedules:
  - name: nap
    cron: "*/5 * * * *"
    recipe: nap
    args: [--seconds, "%s"]
  - name: check
    cron: "0 2 * * *"
    recipe: check
    env: { CHECK_WORD: hello }
  - name: fails
    cron: "@hourly"
    recipe: check
    args: [--fail]
]]

local NAP = [[
return {
  summary = "sleep a while",
  options = { { "seconds", type = "number", default = 1 } },
  run = function(ctx, opts)
    io.stdout:write("napping\n") io.stdout:flush()
    require("moonops.proc").sleep(opts.seconds)
    return 0
  end,
}
]]

local CHECK = [[
return {
  summary = "a custom check",
  options = { { "fail", type = "boolean" } },
  run = function(ctx, opts)
    print("word=" .. tostring(os.getenv("CHECK_WORD")) .. " schedule=" .. tostring(os.getenv("MOONOPS_SCHEDULE")))
    if opts.fail then return 5 end
    return 0
  end,
}
]]

local function project(nap_seconds)
  local dir = T.tmpdir()
  T.write(dir .. "/moonops.yml", CONFIG:format(nap_seconds or 1))
  T.write(dir .. "/recipes/nap.lua", NAP)
  T.write(dir .. "/recipes/check.lua", CHECK)
  return dir
end

describe("moonops schedule", function()
  after_each(T.cleanup)

  it("lists schedules with their next run, as text and JSON", function()
    local dir = project()
    local r = T.moonops({ "schedule", "list", "--json" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
    local list = assert(json.decode(r.stdout))
    assert.equal(3, #list)
    assert.equal("nap", list[1].name)
    assert.equal("*/5 * * * *", list[1].cron)
    assert.same({ "--seconds", "1" }, list[1].args)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d[05]:00Z$", list[1].next_run)
    r = T.moonops({ "schedule", "list" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
    assert.matches("nap%s+%*/5 %* %* %* %*%s+nap", r.stdout)
    assert.matches("never", r.stdout)
  end)

  it("runs a custom recipe now, records the run, and passes env and exit codes through", function()
    local dir = project()
    local r = T.moonops({ "schedule", "run", "check" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
    assert.matches("word=hello schedule=check", r.stdout)
    r = T.moonops({ "schedule", "run", "fails" }, { cwd = dir })
    assert.equal(5, r.code)
    r = T.moonops({ "schedule", "list", "--json" }, { cwd = dir })
    local list = assert(json.decode(r.stdout))
    local by = {}
    for _, s in ipairs(list) do by[s.name] = s end
    assert.equal("COMPLETE", by.check.last_run.status)
    assert.equal(0, by.check.last_run.exit_code)
    assert.equal("ERROR", by.fails.last_run.status)
    assert.equal(5, by.fails.last_run.exit_code)
    local logtext = T.read(dir .. "/.moonops/logs/schedules/check.log")
    assert.matches("word=hello", logtext)
    assert.matches("exit 0", logtext)
  end)

  it("never runs the same schedule twice at once: the second exits 4 naming the holder", function()
    local dir = project(3)
    local pid = T.spawn(string.format("cd %s && %s schedule run nap", T.q(dir), T.q(T.bin)), dir .. "/first.out")
    assert.truthy(T.wait_for(function() return (T.read(dir .. "/first.out") or ""):find("napping") end, 10))
    local r = T.moonops({ "schedule", "run", "nap" }, { cwd = dir })
    assert.equal(4, r.code)
    assert.matches("nap is already running %(pid %d+, since %d%d%d%d%-", r.stderr)
    T.wait_for(function() local _, ok = T.sh("kill -0 " .. pid .. " 2>/dev/null"); return not ok end, 15)
    T.write(dir .. "/moonops.yml", CONFIG:format(0))
    r = T.moonops({ "schedule", "run", "nap" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
  end)

  it("marks a killed run INTERRUPTED at the next run; the kernel released its lock", function()
    local dir = project(30)
    local pid = T.spawn(string.format("cd %s && exec %s schedule run nap", T.q(dir), T.q(T.bin)), dir .. "/first.out")
    assert.truthy(T.wait_for(function() return (T.read(dir .. "/first.out") or ""):find("napping") end, 10))
    T.kill(pid, "KILL")
    os.execute("pkill -KILL -f 'recipes/nap|moonops --config .*moonops.yml nap' 2>/dev/null")
    T.write(dir .. "/moonops.yml", CONFIG:format(0))
    local r = T.moonops({ "schedule", "run", "nap" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
    r = T.moonops({ "lua", "-e", [[
      local db = require("moonops.db").open(".moonops")
      for _, row in ipairs(db:rows("SELECT status FROM schedule_runs WHERE schedule = 'nap' ORDER BY id")) do
        print(row.status)
      end]] }, { cwd = dir })
    assert.equal("INTERRUPTED\nCOMPLETE\n", r.stdout)
  end)

  it("rejects an unknown schedule name, listing the known ones", function()
    local dir = project()
    local r = T.moonops({ "schedule", "run", "nope" }, { cwd = dir })
    assert.equal(2, r.code)
    assert.matches('no schedule named "nope"', r.stderr)
    assert.matches("known: nap, check, fails", r.stderr)
  end)

  it("runs due schedules inside `serve --scheduler`, with the same locks and records", function()
    local dir = T.tmpdir()
    T.write(dir .. "/recipes/check.lua", CHECK)
    T.write(dir .. "/moonops.yml", "data_dir: .moonops\nschedules:\n" ..
      "  - { name: every2s, cron: \"*/2 * * * * *\", recipe: check, env: { CHECK_WORD: served } }\n")
    local port = T.free_port()
    local pid = T.spawn(string.format("cd %s && exec %s serve --scheduler --listen 127.0.0.1:%d", T.q(dir), T.q(T.bin),
      port), dir .. "/serve.log")
    local runs = T.wait_for(function()
      local r = T.moonops({ "schedule", "list", "--json" }, { cwd = dir })
      local list = json.decode(r.stdout)
      local last = list and list[1] and list[1].last_run
      return last and last.status == "COMPLETE" and last
    end, 20, 0.5)
    T.kill(pid)
    assert.truthy(runs, T.read(dir .. "/serve.log"))
    assert.equal(0, runs.exit_code)
    assert.matches("word=served schedule=every2s", T.read(dir .. "/.moonops/logs/schedules/every2s.log"))
  end)

  it("prints crontab lines with absolute paths and escapes", function()
    local dir = project()
    local r = T.moonops({ "schedule", "crontab" }, { cwd = dir })
    assert.equal(0, r.code, r.stderr)
    assert.matches("\n%*/5 %* %* %* %* '/[^']+/moonops' %-%-config '/[^']+/moonops%.yml' schedule run 'nap' >>", r.stdout)
    assert.matches("\n@hourly '", r.stdout)
  end)

  describe("with the real crontab", function()
    local saved, had
    before_each(function()
      local out, ok = T.sh("crontab -l 2>/dev/null")
      saved, had = out, ok
    end)
    after_each(function()
      if had then
        local f = os.tmpname()
        T.write(f, saved)
        os.execute("crontab " .. T.q(f))
        os.remove(f)
      else
        os.execute("crontab -r 2>/dev/null")
      end
    end)

    it("installs between markers, idempotently, keeping other lines, and uninstalls only its block", function()
      local f = os.tmpname()
      T.write(f, "# someone else's job\n17 4 * * * /usr/bin/true other-user-line\n")
      os.execute("crontab " .. T.q(f))
      os.remove(f)
      local a, b = project(), project()
      assert.equal(0, T.moonops({ "schedule", "install" }, { cwd = a }).code)
      assert.equal(0, T.moonops({ "schedule", "install" }, { cwd = a }).code)
      assert.equal(0, T.moonops({ "schedule", "install" }, { cwd = b }).code)
      local tab = T.sh("crontab -l")
      assert.matches("17 4 %* %* %* /usr/bin/true other%-user%-line", tab)
      local _, begins_a = tab:gsub("# BEGIN moonops [^\n]*" .. a:gsub("%p", "%%%0"), "")
      assert.equal(1, begins_a)
      local _, begins = tab:gsub("# BEGIN moonops ", "")
      assert.equal(2, begins)
      local _, ends = tab:gsub("# END moonops ", "")
      assert.equal(2, ends)
      assert.equal(0, T.moonops({ "schedule", "uninstall" }, { cwd = a }).code)
      tab = T.sh("crontab -l")
      assert.is_nil(tab:find(a, 1, true))
      assert.truthy(tab:find(b, 1, true))
      assert.matches("other%-user%-line", tab)
    end)
  end)

  it("validates schedules in moonops.yml with file:line: cron field, unknown recipe, duplicate name, timezone", function()
    local dir = T.tmpdir()
    local cases = {
      { "schedules:\n  - { name: ok, cron: \"@daily\", recipe: hello }\n  - name: bad\n    cron: \"0 24 * * *\"\n" ..
        "    recipe: hello\n", "moonops.yml:4: schedule bad: hour 24 is out of range 0%-23" },
      { "schedules:\n  - { name: a, cron: \"0 2 * * *\", recipe: nosuch }\n",
        "moonops.yml:2: schedule a: no recipe named \"nosuch\"" },
      { "schedules:\n  - { name: a, cron: \"0 2 * * *\", recipe: hello }\n  - { name: a, cron: \"0 3 * * *\", recipe: hello }\n",
        "moonops.yml:3: schedule a is defined twice %(also at moonops.yml:2%)" },
      { "schedules:\n  - { name: a, cron: \"0 2 * * *\", recipe: hello, timezone: Mars/Olympus }\n",
        "moonops.yml:2: schedule a: timezone \"Mars/Olympus\" is not supported" },
    }
    for _, c in ipairs(cases) do
      T.write(dir .. "/moonops.yml", c[1])
      local r = T.moonops({ "schedule", "list" }, { cwd = dir })
      assert.equal(2, r.code, r.stderr)
      assert.matches(c[2], r.stderr)
    end
  end)
end)
