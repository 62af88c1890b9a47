-- Deployments through the real binary and the library, against real git repositories
-- on local paths: fetch into a bare mirror, stage, validate, hooks, atomic switch,
-- history, rollback, coalescing, locks between processes and crash recovery.
local T = require "support.t"
local json = require "moonops.json"

local WS_ID = "6f1c7a52-2f0e-4f0b-9a51-3f4f1d0c9e11"
local SECRET = "s3cr3t-webhook-value-42"

-- Git with a private HOME and no system config, and the example project: tests/support/server.lua.
local support = require "support.server"
local git, MELTANO = support.git, support.MELTANO


local HOOKS = {
  ["hooks/env.sh"] = [[#!/bin/sh
printf '%s\n' "$MOONOPS_WORKSPACE" "$MOONOPS_COMMIT" "$MOONOPS_RELEASE" "$MELTANO_ENVIRONMENT" "$PWD" > hook-env.txt
echo "hook says the secret is $DEPLOY_SECRET"
echo "to stderr" >&2
]],
  ["hooks/fail.sh"] = "#!/bin/sh\necho about to fail\nexit 3\n",
  ["hooks/slow.sh"] = [[#!/bin/sh
echo "$$" > "$MARK_DIR/hook.pid"
echo "start $MOONOPS_COMMIT" >> "$MARK_DIR/sequence"
sleep "${SLOW_SECONDS:-30}"
echo "end $MOONOPS_COMMIT" >> "$MARK_DIR/sequence"
]],
}

-- A bare repository `origin` and a work tree `src` pushing to it; returns paths and helpers.
local function new_repo(root)
  local r = { origin = root .. "/origin.git", src = root .. "/src" }
  git(root, "init -q --bare -b main " .. T.q(r.origin))
  git(root, "init -q -b main " .. T.q(r.src))
  T.write(r.src .. "/meltano.yml", MELTANO)
  for i = 1, 5 do T.write(r.src .. "/files/f" .. i .. ".txt", "file " .. i .. "\n") end
  for path, text in pairs(HOOKS) do
    T.write(r.src .. "/" .. path, text)
    os.execute("chmod +x " .. T.q(r.src .. "/" .. path))
  end
  git(r.src, "add -A")
  git(r.src, "commit -q -m initial")
  git(r.src, "remote add origin " .. T.q(r.origin))
  git(r.src, "push -q origin main")
  function r.commit(path, text, msg)
    T.write(r.src .. "/" .. path, text)
    git(r.src, "add -A")
    git(r.src, "commit -q -m " .. T.q(msg or ("change " .. path)))
    git(r.src, "push -q -f origin main")
    return git(r.src, "rev-parse HEAD")
  end
  function r.head() return git(r.src, "rev-parse HEAD") end
  return r
end

local function config_text(repository, extra)
  return table.concat({
    "data_dir: data",
    "workspaces:",
    "  - id: " .. WS_ID,
    "    name: ws",
    "    repository: " .. repository,
    "    branch: main",
    "    secret_env: DEPLOY_SECRET",
    extra or "",
  }, "\n") .. "\n"
end

-- A project: a repository and a moonops.yml using it; `extra` adds workspace keys.
local function project(extra)
  local root = T.tmpdir()
  local p = { root = root, repo = new_repo(root), dir = root .. "/ops" }
  p.data = p.dir .. "/data"
  p.ws = p.data .. "/workspaces/ws"
  p.marks = root .. "/marks"
  os.execute("mkdir -p " .. T.q(p.marks))
  function p.configure(more, repository)
    T.write(p.dir .. "/moonops.yml", config_text(repository or p.repo.origin, more))
  end
  p.configure(extra)
  function p.run(args, env)
    local e = { DEPLOY_SECRET = SECRET, MARK_DIR = p.marks, GIT_CONFIG_NOSYSTEM = "1", HOME = root }
    for k, v in pairs(env or {}) do e[k] = v end
    return T.moonops(args, { cwd = p.dir, env = e })
  end
  function p.deploy(args, env)
    local a = { "deploy", "ws", "--json" }
    for _, x in ipairs(args or {}) do a[#a + 1] = x end
    local r = p.run(a, env)
    local row = json.decode(r.stdout)
    return row, r
  end
  function p.releases()
    local out = T.sh("ls -1 " .. T.q(p.ws .. "/releases") .. " 2>/dev/null")
    local list = {}
    for l in out:gmatch("[^\n]+") do list[#list + 1] = l end
    return list
  end
  function p.current()
    local out = T.sh("readlink " .. T.q(p.ws .. "/current") .. " 2>/dev/null")
    return (out:gsub("%s+$", ""))
  end
  function p.show(id)
    local r = p.run({ "deploy", "ws", "--show", tostring(id), "--json" })
    assert(r.code == 0, r.stderr)
    return json.decode(r.stdout)
  end
  return p
end

local function hook_list(...)
  local lines = { "    on_deploy:" }
  for _, h in ipairs({ ... }) do lines[#lines + 1] = "      - " .. h end
  return table.concat(lines, "\n")
end

describe("moonops deploy", function()
  after_each(T.cleanup)

  it("brings the branch tip live as a plain release and records it", function()
    local p = project(hook_list("[./hooks/env.sh]"))
    local row, r = p.deploy()
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("COMPLETE", row.status)
    assert.are.equal(p.repo.head(), row.commit)
    assert.are.equal("cli", row.trigger)
    assert.are.equal("ws", row.workspace)
    assert.are.equal(WS_ID, row.workspace_id)
    for _, k in ipairs({ "id", "workspace_id", "workspace", "status", "trigger", "delivery", "ref", "commit", "release",
      "created_at", "started_at", "finished_at", "error" }) do
      assert.is_not_nil(row[k] ~= nil or nil, "key " .. k)
    end
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", row.finished_at)
    assert.matches("%-" .. row.commit:sub(1, 12) .. "$", row.release)
    assert.are.equal("releases/" .. row.release, p.current())
    local rel = p.ws .. "/releases/" .. row.release
    assert.are.equal(MELTANO, T.read(rel .. "/meltano.yml"))
    assert.are.equal("file 3\n", T.read(p.ws .. "/current/files/f3.txt"))
    assert.is_nil(T.read(rel .. "/.git/HEAD"))
    local _, has_git = T.sh("test -e " .. T.q(rel .. "/.git"))
    assert.is_false(has_git)
    -- the hook ran in the release with the documented environment
    local env = {}
    for l in (T.read(rel .. "/hook-env.txt") or ""):gmatch("[^\n]+") do env[#env + 1] = l end
    assert.are.same({ "ws", row.commit, rel, "dev" }, { env[1], env[2], env[3], env[4] })
    -- its output is in the log, with the secret masked
    local shown = p.show(row.id)
    assert.matches("hook says the secret is %*%*%*", shown.log)
    assert.matches("to stderr", shown.log, 1, true)
    assert.is_nil(shown.log:find(SECRET, 1, true))
    -- history
    local l = p.run({ "deploy", "ws", "--list", "--json" })
    assert.are.equal(0, l.code, l.stderr)
    local list = json.decode(l.stdout)
    assert.are.equal(1, #list)
    assert.are.equal(row.id, list[1].id)
    local text = p.run({ "deploy", "ws", "--list" })
    assert.matches("COMPLETE", text.stdout)
    -- workspace state in the store
    local db <close> = assert(require("moonops.db").open(p.data))
    local state = db:one("SELECT * FROM workspaces WHERE id = ?", WS_ID)
    assert.are.equal(row.release, state.current_release)
    assert.are.equal(row.commit, state.current_commit)
  end)

  it("reuses the bare mirror and keeps the previous release", function()
    local p = project()
    local first = p.deploy()
    assert.are.equal("COMPLETE", first.status)
    T.write(p.ws .. "/repo.git/moonops-marker", "kept\n")
    local sha = p.repo.commit("files/new.txt", "new\n")
    local second = p.deploy()
    assert.are.equal("COMPLETE", second.status, second.error)
    assert.are.equal(sha, second.commit)
    assert.are.equal("kept\n", T.read(p.ws .. "/repo.git/moonops-marker"))
    assert.are.equal("new\n", T.read(p.ws .. "/current/files/new.txt"))
    assert.are.same({ first.release, second.release }, p.releases())
  end)

  it("deploys a given --ref: a tag or a commit", function()
    local p = project()
    local old = p.repo.head()
    git(p.repo.src, "tag v1")
    git(p.repo.src, "push -q origin v1")
    p.repo.commit("files/later.txt", "later\n")
    local row = p.deploy({ "--ref", "v1" })
    assert.are.equal("COMPLETE", row.status, row.error)
    assert.are.equal(old, row.commit)
    assert.are.equal("v1", row.ref)
    row = p.deploy({ "--ref", old:sub(1, 10) })
    assert.are.equal(old, row.commit)
    local bad, r = p.deploy({ "--ref", "no-such-ref" })
    assert.are.equal(1, r.code)
    assert.are.equal("ERROR", bad.status)
    assert.matches('ref "no%-such%-ref" not found', bad.error)
  end)

  describe("a failure leaves current where it was", function()
    local function check_failed(p, good, row, r, pattern)
      assert.are.equal(1, r.code)
      assert.are.equal("ERROR", row.status)
      assert.matches(pattern, row.error)
      assert.are.equal("releases/" .. good.release, p.current())
      assert.are.same({ good.release }, p.releases())
      local shown = p.show(row.id)
      assert.matches("error: ", shown.log, 1, true)
    end

    it("hook exits non-zero", function()
      local p = project()
      local good = p.deploy()
      p.configure(hook_list("[./hooks/fail.sh]"))
      local row, r = p.deploy()
      check_failed(p, good, row, r, "on_deploy hook 1 %(%./hooks/fail%.sh%) exited with code 3")
      assert.matches("about to fail", p.show(row.id).log, 1, true)
    end)

    it("hook timeout", function()
      local p = project()
      local good = p.deploy()
      p.configure(hook_list("[./hooks/slow.sh]") .. "\n    hook_timeout: 1")
      local row, r = p.deploy(nil, { SLOW_SECONDS = "30" })
      check_failed(p, good, row, r, "timed out after 1 s")
      -- the hook's process group was stopped
      local pid = tonumber(T.read(p.marks .. "/hook.pid"))
      local _, alive = T.sh("kill -0 " .. pid .. " 2>/dev/null")
      assert.is_false(alive)
    end)

    it("hook command not found", function()
      local p = project()
      local good = p.deploy()
      p.configure(hook_list("[no-such-command-xyz, --flag]"))
      local row, r = p.deploy()
      check_failed(p, good, row, r, "no%-such%-command%-xyz")
      assert.matches("not found", row.error)
    end)

    it("meltano.yml that does not parse (file:line)", function()
      local p = project()
      local good = p.deploy()
      p.repo.commit("meltano.yml", "version: 1\nplugins:\n  extractors: [a\n  b: }\n")
      local row, r = p.deploy()
      check_failed(p, good, row, r, "meltano%.yml:%d+")
    end)

    it("active environment missing from meltano.yml", function()
      local p = project("    environment: qa")
      local row, r = p.deploy()
      assert.are.equal(1, r.code)
      assert.are.equal("ERROR", row.status)
      assert.matches("qa", row.error)
      assert.are.same({}, p.releases())
      assert.are.equal("", p.current())
    end)

    it("unreachable repository: the URL is named, never the token", function()
      local p = project()
      local good = p.deploy()
      local port = T.free_port()
      local url = "http://127.0.0.1:" .. port .. "/nothing.git"
      p.configure("    git_token_env: DEPLOY_TOKEN", url)
      local row, r = p.deploy(nil, { DEPLOY_TOKEN = "tok-9f8e7d6c5b" })
      check_failed(p, good, row, r, "fetch http://127%.0%.0%.1:" .. port .. "/nothing%.git")
      assert.is_nil((r.stdout .. r.stderr .. p.show(row.id).log):find("tok-9f8e7d6c5b", 1, true))
      -- a repository path that does not exist
      p.configure(nil, p.root .. "/missing.git")
      row, r = p.deploy()
      check_failed(p, good, row, r, "missing%.git")
    end)
  end)

  it("prunes to keep_releases without touching the current release", function()
    local p = project("    keep_releases: 2")
    local rows = {}
    for i = 1, 4 do
      if i > 1 then p.repo.commit("files/n.txt", tostring(i)) end
      rows[i] = p.deploy()
      assert.are.equal("COMPLETE", rows[i].status, rows[i].error)
    end
    assert.are.same({ rows[3].release, rows[4].release }, p.releases())
    assert.are.equal("releases/" .. rows[4].release, p.current())
  end)

  it("survives a force-push that removes the deployed commit, and a deleted branch", function()
    local p = project()
    local first = p.deploy()
    -- rewrite history: an unrelated root commit replaces main
    git(p.repo.src, "checkout -q --orphan other")
    T.write(p.repo.src .. "/files/f1.txt", "rewritten\n")
    git(p.repo.src, "add -A")
    git(p.repo.src, "commit -q -m rewritten")
    git(p.repo.src, "push -q -f origin other:main")
    local second = p.deploy()
    assert.are.equal("COMPLETE", second.status, second.error)
    assert.are.equal(git(p.repo.src, "rev-parse HEAD"), second.commit)
    assert.are.equal("rewritten\n", T.read(p.ws .. "/current/files/f1.txt"))
    assert.are.equal("file 1\n", T.read(p.ws .. "/releases/" .. first.release .. "/files/f1.txt"))
    -- the branch is deleted: an error, the live release stays
    git(p.repo.origin, "config receive.denyDeleteCurrent ignore")
    git(p.repo.src, "push -q origin :main")
    local third, r = p.deploy()
    assert.are.equal(1, r.code)
    assert.matches('branch "main" not found', third.error)
    assert.are.equal("releases/" .. second.release, p.current())
    -- and recreated: deploys again
    git(p.repo.src, "push -q origin other:main")
    local fourth = p.deploy()
    assert.are.equal("COMPLETE", fourth.status, fourth.error)
  end)

  it("rolls back to the previous release, then to a given deployment", function()
    local p = project()
    local a = p.deploy()
    p.repo.commit("files/b.txt", "b\n")
    local b = p.deploy()
    p.repo.commit("files/c.txt", "c\n")
    local c = p.deploy()
    local r = p.run({ "deploy", "ws", "--rollback", "--json" })
    assert.are.equal(0, r.code, r.stderr)
    local rb = json.decode(r.stdout)
    assert.are.equal("COMPLETE", rb.status)
    assert.are.equal(b.id, rb.rollback_of)
    assert.are.equal("cli", rb.trigger)
    assert.are.equal(b.commit, rb.commit)
    assert.are.equal("releases/" .. b.release, p.current())
    -- a second rollback walks further back
    rb = json.decode(p.run({ "deploy", "ws", "--rollback", "--json" }).stdout)
    assert.are.equal(a.id, rb.rollback_of)
    assert.are.equal("releases/" .. a.release, p.current())
    -- nothing earlier
    r = p.run({ "deploy", "ws", "--rollback" })
    assert.are.equal(1, r.code)
    assert.matches("no earlier complete release", r.stderr)
    -- by id
    r = p.run({ "deploy", "ws", "--rollback", tostring(c.id), "--json" })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("releases/" .. c.release, p.current())
    -- bad ids
    r = p.run({ "deploy", "ws", "--rollback", "9999" })
    assert.are.equal(1, r.code)
    assert.matches("no deployment 9999", r.stderr)
    r = p.run({ "deploy", "ws", "--rollback", "abc" })
    assert.are.equal(2, r.code)
  end)

  it("runs a recipe named as a hook with moonops itself", function()
    local p = project(hook_list('"hello --name release --loud"'))
    local row, r = p.deploy()
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("COMPLETE", row.status, row.error)
    assert.matches("HELLO RELEASE!", p.show(row.id).log, 1, true)
    p.configure(hook_list('"no-such-recipe"'))
    row = p.deploy()
    assert.are.equal("ERROR", row.status)
    assert.matches("on_deploy hook 1 %(.*no%-such%-recipe%) exited with code 2", row.error)
  end)

  it("keeps a deployment live when the image build after it fails", function()
    local p = project("    image: { build_on_deploy: true }")
    local row, r = p.deploy(nil, { MELTANO_DATAFLOW_DOCKERREGISTRY = false, MATATIKA_DATAFLOW_DOCKERREGISTRY = false })
    assert.are.equal(0, r.code, r.stderr)
    assert.are.equal("COMPLETE", row.status)
    assert.are.equal("releases/" .. row.release, p.current())
    assert.matches("image: build failed (the deployment stays live)", p.show(row.id).log, 1, true)
  end)

  it("refuses an unknown workspace, listing the known ones", function()
    local p = project()
    local r = p.run({ "deploy", "nope" })
    assert.are.equal(2, r.code)
    assert.matches("nope", r.stderr)
    assert.matches("ws", r.stderr)
    r = p.run({ "deploy" })
    assert.are.equal(2, r.code)
    r = p.run({ "deploy", "ws", "--list", "--show", "1" })
    assert.are.equal(2, r.code)
    r = p.run({ "deploy", "ws", "--show", "42" })
    assert.are.equal(1, r.code)
    assert.matches("no deployment 42", r.stderr)
  end)

  it("coalesces queued deployments to the newest", function()
    local p = project()
    local settings = require("moonops.settings").load(p.dir .. "/moonops.yml")
    local deploy = require "moonops.deploy"
    local db <close> = assert(require("moonops.db").open(settings.data_dir))
    local ws = require("moonops.settings").workspace(settings, "ws")
    local q1 = deploy.enqueue(db, ws, { trigger = "webhook", delivery = "d-1", after = p.repo.head() })
    local q2 = deploy.enqueue(db, ws, { trigger = "webhook", delivery = "d-2" })
    local q3 = deploy.enqueue(db, ws, { trigger = "manual" })
    assert.are.equal("QUEUED", q3.status)
    assert.are.equal("SUPERSEDED", db:one("SELECT status FROM deployments WHERE id = ?", q1.id).status)
    assert.are.equal("SUPERSEDED", db:one("SELECT status FROM deployments WHERE id = ?", q2.id).status)
    assert.has_error(function() deploy.enqueue(db, ws, { trigger = "bogus" }) end)
    local done = deploy.run_next(settings, db, ws)
    assert.are.equal(q3.id, done.id)
    assert.are.equal("COMPLETE", done.status, done.error)
    assert.is_nil(deploy.run_next(settings, db, ws))
    local j = deploy.to_json(done)
    assert.are.equal(done.commit_sha, j.commit)
    assert.are.equal(json.null, j.delivery)
    assert.are.equal("manual", j.trigger)
  end)

  it("notes a pushed commit the fetched tip does not contain", function()
    local p = project()
    local settings = require("moonops.settings").load(p.dir .. "/moonops.yml")
    local deploy = require "moonops.deploy"
    local db <close> = assert(require("moonops.db").open(settings.data_dir))
    local ws = require("moonops.settings").workspace(settings, "ws")
    deploy.enqueue(db, ws, { trigger = "webhook", after = string.rep("ab", 20) })
    local done = deploy.run_next(settings, db, ws)
    assert.are.equal("COMPLETE", done.status, done.error)
    assert.matches("is not in the tip", done.log, 1, true)
    deploy.enqueue(db, ws, { trigger = "webhook", after = p.repo.head() })
    done = deploy.run_next(settings, db, ws)
    assert.is_nil(done.log:find("is not in the tip", 1, true))
  end)

  it("runs one deployment at a time per workspace, also across processes", function()
    local p = project(hook_list("[./hooks/slow.sh]"))
    local log1 = p.root .. "/d1.log"
    local env = "cd " .. T.q(p.dir) .. " && MARK_DIR=" .. T.q(p.marks) .. " SLOW_SECONDS=2 DEPLOY_SECRET=x "
    local pid = T.spawn(env .. "exec " .. T.q(T.bin) .. " deploy ws --json > " .. T.q(log1), p.root .. "/d1.err")
    finally(function() T.kill(pid) end)
    assert.truthy(T.wait_for(function() return T.read(p.marks .. "/hook.pid") end, 30))
    -- a second deployment with --no-wait: busy, exit 4
    local r = p.run({ "deploy", "ws", "--no-wait" }, { SLOW_SECONDS = "0" })
    assert.are.equal(4, r.code)
    assert.matches("busy", r.stderr)
    -- a waiting one runs after the first finished
    r = p.run({ "deploy", "ws", "--json" }, { SLOW_SECONDS = "0" })
    assert.are.equal(0, r.code, r.stderr)
    T.wait_for(function()
      local _, alive = T.sh("kill -0 " .. pid .. " 2>/dev/null")
      return not alive
    end, 30)
    local first = json.decode(T.read(log1))
    assert.are.equal("COMPLETE", first.status)
    local seq = {}
    for l in T.read(p.marks .. "/sequence"):gmatch("[^\n]+") do seq[#seq + 1] = l:match("^%a+") end
    assert.are.same({ "start", "end", "start", "end" }, seq)
  end)

  it("recovers from kill -9 during a slow hook", function()
    local p = project()
    local good = p.deploy()
    p.repo.commit("files/x.txt", "x\n")
    p.configure(hook_list("[./hooks/slow.sh]"))
    local env = "cd " .. T.q(p.dir) .. " && MARK_DIR=" .. T.q(p.marks) .. " SLOW_SECONDS=60 DEPLOY_SECRET=x "
    local pid = T.spawn(env .. "exec " .. T.q(T.bin) .. " deploy ws", p.root .. "/d.err")
    finally(function()
      T.kill(pid, "KILL")
      local hp = T.read(p.marks .. "/hook.pid")
      if hp then os.execute("kill -9 -" .. hp:gsub("%s", "") .. " 2>/dev/null") end
    end)
    assert.truthy(T.wait_for(function() return T.read(p.marks .. "/hook.pid") end, 30))
    os.execute("kill -9 " .. pid)
    T.wait_for(function()
      local _, alive = T.sh("kill -0 " .. pid .. " 2>/dev/null")
      return not alive
    end, 10)
    -- the orphaned hook is not ours to keep
    local hook_pid = T.read(p.marks .. "/hook.pid"):gsub("%s", "")
    os.execute("kill -9 -" .. hook_pid .. " 2>/dev/null")
    -- a half-staged release from the crash
    os.execute("mkdir -p " .. T.q(p.ws .. "/releases/20990101T000000.000Z-deadbeef0000.tmp/x"))
    local r = p.run({ "deploy", "ws", "--list", "--json" })
    assert.are.equal(0, r.code, r.stderr)
    local list = json.decode(r.stdout)
    assert.are.equal("INTERRUPTED", list[1].status)
    assert.matches("interrupted", list[1].error)
    assert.are.equal("COMPLETE", list[2].status)
    assert.are.equal("releases/" .. good.release, p.current())
    assert.are.same({ good.release }, p.releases())
    local db <close> = assert(require("moonops.db").open(p.data))
    assert.are.equal("ok", db:one("PRAGMA integrity_check").integrity_check)
    -- and the workspace deploys again
    p.configure()
    local again = p.deploy()
    assert.are.equal("COMPLETE", again.status, again.error)
  end)
end)
