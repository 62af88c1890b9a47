-- Deployments from a repository served by a real `git daemon` on loopback: push, deploy,
-- push again (the mirror is fetched, not cloned), force-push, an unreachable daemon, and
-- a workspace's environment switched with `env use --workspace` before the next deploy.
local T = require "support.t"
local gitserve = require "support.gitserve"
local json = require "moonops.json"

-- Git with a private HOME and no system config, and the example project: tests/support/server.lua.
local support = require "support.server"
local git = support.git

local MELTANO = [[
version: 1
default_environment: dev
environments:
- name: dev
- name: staging
- name: prod
plugins:
  extractors:
  - name: tap-auth0
    config:
      domain: example.eu.auth0.com
]]

local function setup()
  local root = T.tmpdir()
  local s = { root = root, repos = root .. "/repos", src = root .. "/src", dir = root .. "/ops" }
  os.execute("mkdir -p " .. T.q(s.repos))
  git(root, "init -q --bare -b main " .. T.q(s.repos .. "/ws.git"))
  s.server = gitserve.daemon(s.repos)
  git(root, "init -q -b main " .. T.q(s.src))
  T.write(s.src .. "/meltano.yml", MELTANO)
  for i = 1, 50 do T.write(s.src .. "/extract/file" .. i .. ".sql", "select " .. i .. ";\n") end
  T.write(s.src .. "/hooks/env.sh", '#!/bin/sh\necho "env=$MELTANO_ENVIRONMENT"\n')
  os.execute("chmod +x " .. T.q(s.src .. "/hooks/env.sh"))
  git(s.src, "add -A")
  git(s.src, "commit -q -m initial")
  git(s.src, "remote add origin " .. T.q(s.server.url("ws.git")))
  git(s.src, "push -q origin main")
  function s.configure(url)
    T.write(s.dir .. "/moonops.yml", table.concat({
      "data_dir: data",
      "workspaces:",
      "  - id: 2d0c5e6a-8d43-4b8e-9a0f-7b1b7d1e5f10",
      "    name: ws",
      "    repository: " .. (url or s.server.url("ws.git")),
      "    on_deploy:",
      "      - [./hooks/env.sh]",
      "",
    }, "\n"))
  end
  s.configure()
  function s.run(args)
    return T.moonops(args, { cwd = s.dir, env = { HOME = root, GIT_CONFIG_NOSYSTEM = "1" } })
  end
  function s.deploy()
    local r = s.run({ "deploy", "ws", "--json" })
    return json.decode(r.stdout) or {}, r
  end
  function s.push(path, text)
    T.write(s.src .. "/" .. path, text)
    git(s.src, "add -A")
    git(s.src, "commit -q -m " .. T.q("change " .. path))
    git(s.src, "push -q -f origin HEAD:main")
    return git(s.src, "rev-parse HEAD")
  end
  return s
end

describe("deploy over git daemon", function()
  local s
  before_each(function() s = setup() end)
  after_each(function()
    if s then s.server.stop() end
    T.cleanup()
  end)

  it("deploys pushes, fetching into the same bare mirror", function()
    local first, r = s.deploy()
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("COMPLETE", first.status)
    assert.are.equal(git(s.src, "rev-parse HEAD"), first.commit)
    local ws = s.dir .. "/data/workspaces/ws"
    assert.are.equal("select 50;\n", T.read(ws .. "/current/extract/file50.sql"))
    local objects_before = T.sh("find " .. T.q(ws .. "/repo.git/objects") .. " -type f | sort")
    local sha = s.push("extract/file51.sql", "select 51;\n")
    local second = s.deploy()
    assert.are.equal("COMPLETE", second.status, second.error)
    assert.are.equal(sha, second.commit)
    assert.are.equal("select 51;\n", T.read(ws .. "/current/extract/file51.sql"))
    -- fetched into the existing mirror: every earlier object file is still there
    local after = T.sh("find " .. T.q(ws .. "/repo.git/objects") .. " -type f | sort")
    for line in objects_before:gmatch("[^\n]+") do
      assert.truthy(after:find(line, 1, true), line)
    end
    -- a force-push that drops the deployed commit
    git(s.src, "reset -q --hard HEAD~1")
    local rewritten = s.push("extract/other.sql", "select 0;\n")
    local third = s.deploy()
    assert.are.equal("COMPLETE", third.status, third.error)
    assert.are.equal(rewritten, third.commit)
    assert.is_nil(T.read(ws .. "/current/extract/file51.sql"))
  end)

  it("validates and runs hooks against the environment chosen with env use --workspace", function()
    local r = s.run({ "env", "use", "prod", "--workspace", "ws" })
    assert.are_not.equal(0, r.code)
    assert.matches("moonops deploy ws", r.stderr, 1, true)
    local first = s.deploy()
    assert.are.equal("COMPLETE", first.status, first.error)
    r = s.run({ "env", "use", "qa", "--workspace", "ws" })
    assert.are_not.equal(0, r.code)
    assert.matches("qa", r.stderr)
    assert.matches("dev, staging, prod", r.stderr, 1, true)
    r = s.run({ "env", "use", "prod", "--workspace", "ws" })
    assert.are.equal(0, r.code, r.stderr)
    local second = s.deploy()
    assert.are.equal("COMPLETE", second.status, second.error)
    local log = json.decode(s.run({ "deploy", "ws", "--show", tostring(second.id), "--json" }).stdout).log
    assert.matches("env=prod", log, 1, true)
    r = s.run({ "env", "list", "--workspace", "ws", "--json" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("prod", json.decode(r.stdout).active)
  end)

  it("names an unreachable daemon's URL and keeps the live release", function()
    local first = s.deploy()
    assert.are.equal("COMPLETE", first.status)
    local url = s.server.url("ws.git")
    s.server.stop()
    local row, r = s.deploy()
    assert.are.equal(1, r.code)
    assert.are.equal("ERROR", row.status)
    assert.matches("fetch " .. url:gsub("%p", "%%%0"), row.error)
    local ws = s.dir .. "/data/workspaces/ws"
    assert.are.equal("releases/" .. first.release, (T.sh("readlink " .. T.q(ws .. "/current")):gsub("%s+$", "")))
  end)

  -- A hook that writes its pid and the pid of a child that ignores INT and TERM, then
  -- waits: `moonops deploy` is stopped with a signal while it runs.
  local function deploy_with_stalling_hook()
    local pids = T.tmpdir()
    T.write(s.src .. "/hooks/stall.sh", table.concat({
      "#!/bin/sh",
      "echo $$ > " .. pids .. "/hook.tmp && mv " .. pids .. "/hook.tmp " .. pids .. "/hook",
      "(trap '' INT TERM; exec sleep 60) &",
      "echo $! > " .. pids .. "/child.tmp && mv " .. pids .. "/child.tmp " .. pids .. "/child",
      "wait",
      "",
    }, "\n"))
    os.execute("chmod +x " .. T.q(s.src .. "/hooks/stall.sh"))
    s.push("hooks/stall.sh", T.read(s.src .. "/hooks/stall.sh"))
    T.write(s.dir .. "/moonops.yml", table.concat({
      "data_dir: data",
      "workspaces:",
      "  - id: 2d0c5e6a-8d43-4b8e-9a0f-7b1b7d1e5f10",
      "    name: ws",
      "    repository: " .. s.server.url("ws.git"),
      "    on_deploy:",
      "      - [./hooks/stall.sh]",
      "",
    }, "\n"))
    local proc = require "moonops.proc"
    local p = assert(proc.spawn {
      argv = { T.bin, "deploy", "ws" },
      cwd = s.dir,
      env = { HOME = s.root, GIT_CONFIG_NOSYSTEM = "1" },
      stdout = pids .. "/out",
      stderr = pids .. "/out",
    })
    local list = T.wait_for(function()
      local hook, child = T.read(pids .. "/hook"), T.read(pids .. "/child")
      if hook and child then return { tonumber(hook), tonumber(child) } end
    end, 30)
    assert(list, "the hook did not start: " .. (T.read(pids .. "/out") or ""))
    return p, list
  end

  for _, case in ipairs({ { "INT", 130 }, { "TERM", 143 } }) do
    local sig, code = case[1], case[2]
    it("stops the running hook and its children on SIG" .. sig .. " and records the deployment INTERRUPTED", function()
      local proc = require "moonops.proc"
      local p, pids = deploy_with_stalling_hook()
      finally(function()
        for _, pid in ipairs(pids) do proc.kill(pid, "KILL") end
        p:close()
      end)
      assert.is_true(p:kill(sig)) -- moonops's process group, as Ctrl-C or `kill` would
      local got, name = p:wait(20)
      assert.are.equal(code, got)
      assert.are.equal(sig, name)
      assert.truthy(T.wait_for(function()
        return not proc.alive(pids[1]) and not proc.alive(pids[2])
      end, 5), "the hook outlived moonops deploy")
      local r = s.run({ "deploy", "ws", "--list", "--json" })
      assert.are.equal(0, r.code, r.stderr)
      local rows = json.decode(r.stdout)
      assert.are.equal("INTERRUPTED", rows[1].status)
      assert.matches("interrupted", rows[1].error)
      -- the workspace is free again and its interrupted release is gone
      local ws = s.dir .. "/data/workspaces/ws"
      assert.is_nil(T.read(ws .. "/current"))
      assert.are.equal("", T.sh("ls " .. T.q(ws .. "/releases")))
    end)
  end
end)
