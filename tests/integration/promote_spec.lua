-- `moonops promote` against the git CLI as the oracle: every scenario runs through
-- moonops and through the documented manual flow on identical copies of the target
--   git clone DST; git remote add src SRC;
--   git pull -X theirs --allow-unrelated-histories src main; git push
-- and both must give the same tree and the same parents. Remotes are plain paths,
-- git daemon and smart HTTP with Basic auth; workspaces in moonops.yml reached over ssh
-- (OpenSSH's sshd) with their ssh_key_file.
local T = require "support.t"
local gitserve = require "support.gitserve"
local json = require "moonops.json"

local TOKEN = "promote-token-4711"

local function sandbox()
  local root = T.tmpdir()
  local sb = { root = root, home = root .. "/home", srv = root .. "/srv", cwd = root .. "/cwd" }
  os.execute(string.format("mkdir -p %s %s %s", T.q(sb.home), T.q(sb.srv), T.q(sb.cwd)))
  function sb.sh(dir, cmd)
    return T.sh(string.format("cd %s && export GIT_CONFIG_NOSYSTEM=1 HOME=%s && { %s; } 2>&1",
      T.q(dir), T.q(sb.home), cmd))
  end
  function sb.git(dir, cmd)
    local out, ok, code = sb.sh(dir, cmd)
    assert(ok, string.format("`%s` failed (%s): %s", cmd, tostring(code), out))
    return (out:gsub("%s+$", ""))
  end
  sb.git(root, "git config --global user.name 'Pat Promoter' && git config --global user.email pat@example.com"
    .. " && git config --global init.defaultBranch main")
  function sb.env(extra)
    local env = { HOME = sb.home, GIT_CONFIG_NOSYSTEM = "1", MOONOPS_GIT_TOKEN = false, MOONOPS_CONFIG = false,
      NO_COLOR = "1" }
    for k, v in pairs(extra or {}) do env[k] = v end
    return env
  end
  function sb.moonops(args, extra_env)
    return T.moonops(args, { cwd = sb.cwd, env = sb.env(extra_env) })
  end
  function sb.tip(bare, rev) return sb.git(bare, "git rev-parse " .. (rev or "main")) end
  return sb
end

-- Apply one step in a work repository and commit: {path = content | false} or a shell command.
local function apply(sb, dir, step)
  if type(step) == "string" then
    sb.git(dir, step)
  else
    for path, content in pairs(step) do
      if content == false then
        os.remove(dir .. "/" .. path)
      else
        T.write(dir .. "/" .. path, content)
      end
    end
  end
  sb.git(dir, "git add -A && git commit -q --allow-empty -m step")
end

local function init_repo(sb, name, files)
  local dir = sb.root .. "/" .. name
  sb.git(sb.root, "git init -q " .. T.q(name))
  apply(sb, dir, files or {})
  return dir
end

-- Build srv/src.git and srv/dst.git from a scenario, then two identical copies of the target.
local function build(sb, sc)
  local src, dst
  if sc.unrelated then
    src = init_repo(sb, "src-work", sc.src_init)
    dst = init_repo(sb, "dst-work", sc.dst_init)
  else
    init_repo(sb, "base", sc.base)
    sb.git(sb.root, "git clone -q base src-work && git clone -q base dst-work")
    src, dst = sb.root .. "/src-work", sb.root .. "/dst-work"
  end
  for _, step in ipairs(sc.src or {}) do apply(sb, src, step) end
  for _, step in ipairs(sc.dst or {}) do apply(sb, dst, step) end
  sb.git(sb.root, "git clone -q --bare src-work srv/src.git && git clone -q --bare dst-work srv/dst.git"
    .. " && cp -a srv/dst.git srv/dst-moonops.git && cp -a srv/dst.git srv/dst-git.git")
end

-- How each kind of remote is reached by moonops and by the git CLI.
local transports = {
  path = function(sb)
    return { moonops = function(r) return sb.srv .. "/" .. r end, cli = function(r) return sb.srv .. "/" .. r end,
      stop = function() end }
  end,
  daemon = function(sb)
    local srv = gitserve.daemon(sb.srv)
    return { moonops = srv.url, cli = srv.url, stop = srv.stop }
  end,
  http = function(sb)
    local web = gitserve.http(sb.srv, { user = "x-access-token", token = TOKEN })
    return { moonops = web.url, env = { MOONOPS_GIT_TOKEN = TOKEN }, stop = web.stop,
      cli = function(r) return (web.url(r):gsub("//", "//x-access-token:" .. TOKEN .. "@")) end }
  end,
}

local function manual(sb, remote)
  return sb.sh(sb.root, string.format("rm -rf manual && git clone -q %s manual && cd manual && git remote add src %s"
    .. " && git -c pull.rebase=false pull -q --no-edit -X theirs --allow-unrelated-histories src main"
    .. " && git push -q origin main", T.q(remote.cli("dst-git.git")), T.q(remote.cli("src.git"))))
end

local function parents(sb, bare)
  return sb.git(bare, "git rev-parse main^@")
end

local lines20 = {}
for i = 1, 20 do lines20[i] = "line " .. i .. " of the guide" end
local guide = table.concat(lines20, "\n") .. "\n"

local scenarios = {
  { name = "unrelated histories", expect = "merge", unrelated = true,
    src_init = { ["meltano.yml"] = "version: 1\n# dev\n", ["only_dev.txt"] = "dev\n" },
    dst_init = { ["meltano.yml"] = "version: 1\n# staging\n", ["only_staging.txt"] = "staging\n" } },
  { name = "a fast-forward", expect = "ff", base = { a = "1\n" }, src = { { a = "2\n", b = "new\n" } } },
  { name = "both sides changed different files", expect = "merge",
    base = { a = "a\n", b = "b\n" }, src = { { a = "a from source\n" } }, dst = { { b = "b from target\n" } } },
  { name = "both sides changed the same lines (source wins)", expect = "merge",
    base = { f = "1\n2\n3\n4\n5\n" }, src = { { f = "1\nSOURCE\n3\n4\n5\n" } }, dst = { { f = "1\nTARGET\n3\n4\nT5\n" } },
    check = function(sb, bare) assert.equal("1\nSOURCE\n3\n4\nT5\n", sb.git(bare, "git show main:f") .. "\n") end },
  { name = "a file added on both sides", expect = "merge",
    base = { readme = "r\n" }, src = { { ["new.txt"] = "shared\nfrom source\n" } },
    dst = { { ["new.txt"] = "shared\nfrom target\n" } } },
  { name = "a binary file changed on both sides", expect = "merge",
    base = { ["logo.bin"] = "\0\1\2\3base" }, src = { { ["logo.bin"] = "\0\1source\2" } },
    dst = { { ["logo.bin"] = "\0\1target\3" } },
    check = function(sb, bare) assert.equal("\0\1source\2", sb.git(bare, "git show main:logo.bin")) end },
  { name = "a rename on one side", expect = "merge",
    base = { ["docs/guide.md"] = guide }, src = { "mkdir -p guide && git mv docs/guide.md guide/intro.md" },
    dst = { { ["docs/guide.md"] = guide:gsub("line 3 of", "LINE 3 of"), other = "x\n" } } },
  { name = "modify/delete", expect = "conflict",
    base = { ["transform.sql"] = "select 1\n", keep = "k\n" }, src = { { ["transform.sql"] = false } },
    dst = { { ["transform.sql"] = "select 2\n" } },
    conflicts = { { path = "transform.sql", kind = "modify/delete" } } },
  { name = "rename/rename", expect = "conflict",
    base = { ["orders.sql"] = guide }, src = { "git mv orders.sql fct_orders.sql" }, dst = { "git mv orders.sql stg_orders.sql" },
    conflicts = { { path = "orders.sql", kind = "rename/rename", ours_path = "stg_orders.sql", theirs_path = "fct_orders.sql" } },
    text = "rename/rename  orders.sql  (target: renamed to stg_orders.sql, source: renamed to fct_orders.sql)" },
  { name = "rename/delete", expect = "conflict",
    base = { ["orders.sql"] = guide, keep = "k\n" }, src = { { ["orders.sql"] = false } },
    dst = { "git mv orders.sql stg_orders.sql" },
    conflicts = { { path = "orders.sql", kind = "rename/delete", ours_path = "stg_orders.sql" } },
    text = "rename/delete  orders.sql  (target: renamed to stg_orders.sql, source: deleted)" },
  { name = "nothing to promote", expect = "uptodate",
    base = { a = "1\n" }, src = {}, dst = { { a = "target is ahead\n" } } },
}

describe("moonops promote, checked against the git CLI", function()
  after_each(T.cleanup)

  for tname, make in pairs(transports) do
    describe("over " .. tname, function()
      for _, sc in ipairs(scenarios) do
        it(sc.name, function()
          local sb = sandbox()
          build(sb, sc)
          local remote = make(sb)
          local ok, err = pcall(function()
            local mbare, gbare = sb.srv .. "/dst-moonops.git", sb.srv .. "/dst-git.git"
            local before = sb.tip(mbare)
            local r = sb.moonops({ "promote", "--from", remote.moonops("src.git"), "--to", remote.moonops("dst-moonops.git"),
              "--yes", "--json" }, remote.env)
            local out = json.decode(r.stdout)
            local cli_out, cli_ok = manual(sb, remote)
            assert.is_nil(r.stderr:find(TOKEN, 1, true))
            assert.is_nil(r.stdout:find(TOKEN, 1, true))
            assert.equal(before, out.old_commit)
            if sc.expect == "conflict" then
              assert.equal(3, r.code, r.stderr)
              assert.equal("conflicts", out.status)
              assert.same(sc.conflicts, out.conflicts)
              if sc.text then -- the report without --json names both sides
                local t = sb.moonops({ "promote", "--from", remote.moonops("src.git"), "--to",
                  remote.moonops("dst-moonops.git"), "--yes" }, remote.env)
                assert.equal(3, t.code)
                assert.matches(sc.text, t.stdout .. t.stderr, 1, true)
              end
              assert.equal(before, sb.tip(mbare)) -- nothing pushed
              assert.is_false(cli_ok, "the git CLI merged what moonops called a conflict: " .. cli_out)
              return
            end
            assert.is_true(cli_ok, cli_out)
            assert.equal(0, r.code, r.stderr)
            assert.equal(sb.git(gbare, "git rev-parse main^{tree}"), sb.git(mbare, "git rev-parse main^{tree}"))
            assert.equal(parents(sb, gbare), parents(sb, mbare))
            if sc.expect == "uptodate" then
              assert.equal("up-to-date", out.status)
              assert.equal(before, sb.tip(mbare))
              assert.same({}, out.files)
            elseif sc.expect == "ff" then
              assert.equal("pushed", out.status)
              assert.is_true(out.fast_forward)
              assert.equal(sb.tip(sb.srv .. "/src.git"), sb.tip(mbare))
            else
              assert.equal("pushed", out.status)
              assert.equal(out.commit, sb.tip(mbare))
              assert.equal(sc.unrelated == true, out.unrelated)
              assert.equal(before .. "\n" .. sb.tip(sb.srv .. "/src.git"), parents(sb, mbare))
            end
            assert.equal(sb.tip(mbare, "main"), sb.git(sb.cwd .. "/.moonops/promote/" .. assert(
              T.sh("ls " .. T.q(sb.cwd .. "/.moonops/promote")):match("[^\n]+")), "git rev-parse main"))
            if sc.check then sc.check(sb, mbare) end
          end)
          remote.stop()
          assert(ok, err)
        end)
      end
    end)
  end
end)

describe("moonops promote", function()
  after_each(T.cleanup)

  local function simple(sb)
    build(sb, { base = { f = "1\n" }, src = { { f = "source\n" } }, dst = { { g = "target\n" } } })
    return sb.srv .. "/src.git", sb.srv .. "/dst-moonops.git"
  end

  it("reviews with --dry-run, backs up the target tip, and reuses its working copy", function()
    local sb = sandbox()
    local src, dst = simple(sb)
    local before = sb.tip(dst)
    local r = sb.moonops({ "promote", "--from", src, "--to", dst, "--dry-run" })
    assert.equal(0, r.code, r.stderr)
    assert.matches("M f", r.stdout, 1, true)
    assert.matches("dry run: nothing pushed", r.stdout, 1, true)
    assert.equal(before, sb.tip(dst))
    local copy = sb.cwd .. "/.moonops/promote/" .. T.sh("ls " .. T.q(sb.cwd .. "/.moonops/promote")):match("[^\n]+")
    local backups = sb.git(copy, "git for-each-ref --format='%(refname) %(objectname)' refs/moonops/backup")
    assert.matches("^refs/moonops/backup/%d+T%d+Z " .. before .. "$", backups)
    -- the second run fetches into the same copy
    T.write(copy .. "/.git/marker", "kept")
    r = sb.moonops({ "promote", "--from", src, "--to", dst, "--yes", "--json" })
    assert.equal(0, r.code, r.stderr)
    local out = json.decode(r.stdout)
    assert.equal("pushed", out.status)
    assert.matches("^refs/moonops/backup/", out.backup_ref)
    assert.equal(1, #out.files)
    assert.same({ "f", "modified", "source" }, { out.files[1].path, out.files[1].change, out.files[1].hunks[1].from })
    assert.equal("kept", T.read(copy .. "/.git/marker"))
    assert.equal(out.commit, sb.git(copy, "git rev-parse HEAD"))
    assert.equal("source\n", T.read(copy .. "/f"))
  end)

  it("marks which hunks came from the source, keeping the target's own change", function()
    local sb = sandbox()
    local lines = {}
    for i = 1, 30 do lines[i] = "line " .. i end
    local text = table.concat(lines, "\n") .. "\n"
    build(sb, { base = { f = text, g = "g\n" },
      -- the source changes lines 3 and 25 of f and g; the target changes line 5 of f only
      src = { { f = text:gsub("line 3\n", "line 3 from source\n"):gsub("line 25\n", "line 25 from source\n"),
        g = "g from source\n" } },
      dst = { { f = text:gsub("line 5\n", "line 5 from target\n") } } })
    local src, dst = sb.srv .. "/src.git", sb.srv .. "/dst-moonops.git"
    local r = sb.moonops({ "promote", "--from", src, "--to", dst, "--dry-run", "--json" })
    assert.equal(0, r.code, r.stderr)
    local by = {}
    for _, f in ipairs(json.decode(r.stdout).files) do by[f.path] = f end
    -- line 3 shares a hunk with the target's kept line 5; line 25 is the source's alone
    assert.same({ { old_start = 1, old_lines = 6, new_start = 1, new_lines = 6, additions = 1, deletions = 1, from = "both" },
      { old_start = 22, old_lines = 7, new_start = 22, new_lines = 7, additions = 1, deletions = 1, from = "source" } },
      by.f.hunks)
    -- a file the target did not touch: all of it from the source
    assert.same({ { old_start = 1, old_lines = 1, new_start = 1, new_lines = 1, additions = 1, deletions = 1,
      from = "source" } }, by.g.hunks)
    -- the ranges are git's own
    local merged = sb.root .. "/merged"
    sb.git(sb.root, "git clone -q " .. T.q(dst) .. " merged && cd merged && git remote add src " .. T.q(src)
      .. " && git -c pull.rebase=false pull -q --no-edit -X theirs src main")
    assert.matches("@@ %-1,6 %+1,6 @@.*@@ %-22,7 %+22,7 @@", (sb.git(merged, "git diff HEAD~1 HEAD -- f"):gsub("\n", " ")))
    -- text: ranges always, the hunk text with --diff
    r = sb.moonops({ "promote", "--from", src, "--to", dst, "--dry-run" })
    assert.matches("@@ -1,6 +1,6 @@ from source and target (+1 -1)", r.stdout, 1, true)
    assert.matches("@@ -22,7 +22,7 @@ from source (+1 -1)", r.stdout, 1, true)
    assert.is_nil(r.stdout:find("+line 25 from source", 1, true))
    r = sb.moonops({ "promote", "--from", src, "--to", dst, "--dry-run", "--diff" })
    assert.matches("\n        %-line 25\n        %+line 25 from source\n", r.stdout)
    assert.matches("\n         line 5 from target\n", r.stdout)
  end)

  it("marks every hunk of a fast-forward and of unrelated histories as the source's", function()
    for _, sc in ipairs({ { base = { f = "1\n2\n" }, src = { { f = "1\nTWO\n", bin = "\0\1" } } },
      { unrelated = true, src_init = { f = "source\n" }, dst_init = { f = "target\n", t = "t\n" } } }) do
      local sb = sandbox()
      build(sb, sc)
      local r = sb.moonops({ "promote", "--from", sb.srv .. "/src.git", "--to", sb.srv .. "/dst-moonops.git", "--dry-run",
        "--json" })
      assert.equal(0, r.code, r.stderr)
      local files = json.decode(r.stdout).files
      assert.is_true(#files > 0)
      for _, f in ipairs(files) do
        if f.binary then assert.equal("source", f.from) end
        for _, h in ipairs(f.hunks) do assert.equal("source", h.from) end
      end
      T.cleanup()
    end
  end)

  it("pushes to a plain path only what the target lacks, never the source's other branches", function()
    local sb = sandbox()
    build(sb, { base = { f = "1\n", ["d/keep.sql"] = "k\n" }, src = { { f = "source\n", ["d/new.sql"] = "n\n" } },
      dst = { { g = "target\n" } } })
    local src, dst = sb.srv .. "/src.git", sb.srv .. "/dst-moonops.git"
    sb.git(sb.root .. "/src-work", "git checkout -q -b wip && echo unfinished > wip.txt && git add wip.txt"
      .. " && git commit -qm wip && git push -q " .. T.q(src) .. " wip")
    local wip_blob = sb.git(src, "git rev-parse wip:wip.txt")
    local before = sb.tip(dst)
    local r = sb.moonops({ "promote", "--from", src, "--to", dst, "--yes", "--json" })
    assert.equal(0, r.code, r.stderr)
    local out = json.decode(r.stdout)
    assert.equal("pushed", out.status)
    assert.equal(out.commit, sb.tip(dst))
    assert.equal(before .. "\n" .. sb.tip(src), sb.git(dst, "git rev-parse main^@"))
    assert.equal("", sb.git(dst, "git fsck --full --no-dangling 2>&1 | grep -v -e '^Checking' -e '^notice' || true"))
    assert.is_false(select(2, sb.sh(dst, "git cat-file -e " .. wip_blob)))
    -- one new pack holding exactly what the new tip reaches and the old one does not
    local newest = sb.git(dst, "ls -t objects/pack/*.idx"):match("^[^\n]+")
    assert.equal(sb.git(dst, "git rev-list --objects main --not " .. before .. " | cut -d' ' -f1 | sort"),
      sb.git(dst, "git show-index < " .. T.q(newest) .. " | cut -d' ' -f2 | sort"))
  end)

  it("refuses to push without --yes when stdin is not a terminal", function()
    local sb = sandbox()
    local src, dst = simple(sb)
    local before = sb.tip(dst)
    local r = sb.moonops({ "promote", "--from", src, "--to", dst })
    assert.equal(2, r.code)
    assert.matches("pass %-%-yes", r.stderr)
    assert.equal(before, sb.tip(dst))
  end)

  it("stops with exit 4 when the target moved between review and push", function()
    local sb = sandbox()
    local src, dst = simple(sb)
    sb.git(sb.root, "git clone -q " .. T.q(dst) .. " mover")
    T.write(sb.root .. "/recipes/promote_race.lua", [[
local promote = require "moonops.promote"
return {
  options = { { "from", type = "string" }, { "to", type = "string" } },
  run = function(ctx, opts)
    local p = promote.plan(ctx, { from = opts.from, to = opts.to, yes = true })
    promote.prepare(p)
    promote.fetch_source(p)
    promote.merge(p)
    promote.review(p)
    assert(os.execute(os.getenv("MOVE_TARGET")))
    promote.push(p)
    ctx.print(ctx.json.encode(promote.outcome(p)))
    return promote.EXIT[p.status]
  end,
}]])
    local move = string.format("cd %s && export HOME=%s GIT_CONFIG_NOSYSTEM=1 && echo moved > g && "
      .. "git commit -qam moved && git push -q origin main", T.q(sb.root .. "/mover"), T.q(sb.home))
    local r = sb.moonops({ "--recipes", sb.root .. "/recipes", "promote_race", "--from", src, "--to", dst },
      { MOVE_TARGET = move })
    assert.equal(4, r.code, r.stderr)
    local out = json.decode(r.stdout)
    assert.equal("target-moved", out.status)
    assert.equal(sb.git(sb.root .. "/mover", "git rev-parse HEAD"), sb.tip(dst))
  end)

  it("reports a pre-receive rejection with exit 1 and the server's reason", function()
    local sb = sandbox()
    local src, dst = simple(sb)
    local before = sb.tip(dst)
    T.write(dst .. "/hooks/pre-receive", "#!/bin/sh\necho 'staging is frozen until Monday' >&2\nexit 1\n")
    os.execute("chmod +x " .. T.q(dst .. "/hooks/pre-receive"))
    -- server-side hooks run when a server receives the push (git daemon here)
    local srv = gitserve.daemon(sb.srv)
    local ok, err = pcall(function()
      local r = sb.moonops({ "promote", "--from", src, "--to", srv.url("dst-moonops.git"), "--yes", "--json" })
      assert.equal(1, r.code)
      assert.matches("push git://127%.0%.0%.1:%d+/dst%-moonops%.git refs/heads/main: rejected %(pre%-receive hook declined",
        r.stderr)
      assert.matches("staging is frozen until Monday", r.stderr)
      assert.equal("failed", json.decode(r.stdout).status)
      assert.equal(before, sb.tip(dst))
    end)
    srv.stop()
    assert(ok, err)
  end)

  it("runs the pre-receive hook of a target on a plain path, as git push does: exit 1 with its reason", function()
    local sb = sandbox()
    local src, dst = simple(sb)
    local before = sb.tip(dst)
    T.write(dst .. "/hooks/pre-receive", "#!/bin/sh\necho 'staging is frozen until Monday' >&2\nexit 1\n")
    os.execute("chmod +x " .. T.q(dst .. "/hooks/pre-receive"))
    local r = sb.moonops({ "promote", "--from", src, "--to", dst, "--yes", "--json" })
    assert.equal(1, r.code)
    assert.truthy(r.stderr:find("push " .. dst .. " refs/heads/main: rejected (pre-receive hook declined; "
      .. "remote: staging is frozen until Monday)", 1, true), r.stderr)
    assert.equal("failed", json.decode(r.stdout).status)
    assert.equal(before, sb.tip(dst))
  end)

  it("runs the post-receive hook of a target on a plain path once, after the branch moved", function()
    local sb = sandbox()
    local src, dst = simple(sb)
    local before = sb.tip(dst)
    T.write(dst .. "/hooks/post-receive", "#!/bin/sh\necho \"$(cat) main=$(git rev-parse main)\" >> deploys.log\n")
    os.execute("chmod +x " .. T.q(dst .. "/hooks/post-receive"))
    local r = sb.moonops({ "promote", "--from", src, "--to", dst, "--yes", "--json" })
    assert.equal(0, r.code, r.stderr)
    local out = json.decode(r.stdout)
    assert.equal("pushed", out.status)
    assert.equal(out.commit, sb.tip(dst))
    assert.equal(string.format("%s %s refs/heads/main main=%s\n", before, out.commit, out.commit),
      T.read(dst .. "/deploys.log"))
  end)

  it("shows the effective configuration change of the target's environment, secrets masked", function()
    local sb = sandbox()
    local function meltano(domain, secret, batch)
      return table.concat({
        "version: 1", "default_environment: staging", "project_id: p1",
        "plugins:", "  extractors:", "  - name: tap-auth0", "    config:", "      domain: base.example.com",
        "      batch_size: " .. batch,
        "environments:", "- name: dev", "- name: staging", "  config:", "    plugins:", "      extractors:",
        "      - name: tap-auth0", "        config:", "          domain: " .. domain,
        "          client_secret: " .. secret, "" }, "\n")
    end
    build(sb, {
      base = { ["meltano.yml"] = meltano("staging.example.com", "old-secret-value", 100) },
      src = { { ["meltano.yml"] = meltano("new.example.com", "new-secret-value", 100) } },
      dst = { { ["notes.txt"] = "target only\n" } },
    })
    local src, dst = sb.srv .. "/src.git", sb.srv .. "/dst-moonops.git"
    local r = sb.moonops({ "promote", "--from", src, "--to", dst, "--dry-run", "--json" })
    assert.equal(0, r.code, r.stderr)
    local out = json.decode(r.stdout)
    assert.equal("dry-run", out.status)
    local by = {}
    for _, c in ipairs(out.config_changes) do by[c.setting] = c end
    assert.same({ environment = "staging", plugin = "tap-auth0", type = "extractors", setting = "domain",
      from = "staging.example.com", to = "new.example.com" }, by.domain)
    assert.equal("(redacted)", by.client_secret.from)
    assert.equal("(redacted)", by.client_secret.to)
    assert.is_nil(by.batch_size)
    local text = sb.moonops({ "promote", "--from", src, "--to", dst, "--dry-run" })
    assert.matches("tap-auth0.domain: staging.example.com -> new.example.com", text.stdout, 1, true)
    assert.matches("tap-auth0.client_secret: (redacted) -> (redacted)", text.stdout, 1, true)
    for _, s in ipairs({ "old-secret-value", "new-secret-value" }) do
      for _, o in ipairs({ r.stdout, r.stderr, text.stdout, text.stderr }) do assert.is_nil(o:find(s, 1, true)) end
    end
  end)

  describe("bad input", function()
    it("names an unknown workspace when there is no moonops.yml", function()
      local sb = sandbox()
      local r = sb.moonops({ "promote", "--from", "my-workspace-dev", "--to", "my-workspace-staging", "--yes" })
      assert.equal(2, r.code)
      assert.matches('unknown workspace "my%-workspace%-dev"', r.stderr)
    end)

    it("fails clearly for a missing path and an unreachable remote, pushing nothing", function()
      local sb = sandbox()
      local src, dst = simple(sb)
      local before = sb.tip(dst)
      local r = sb.moonops({ "promote", "--from", sb.root .. "/nowhere.git", "--to", dst, "--yes" })
      assert.equal(1, r.code)
      assert.matches("no repository at .*/nowhere%.git", r.stderr)
      local port = T.free_port()
      r = sb.moonops({ "promote", "--from", string.format("git://127.0.0.1:%d/src.git", port), "--to", dst, "--yes" })
      assert.equal(1, r.code)
      assert.matches("fetch git://127%.0%.0%.1:%d+/src%.git: .*connect", r.stderr)
      assert.equal(before, sb.tip(dst))
      assert.is_string(src)
    end)

    it("gives up on wrong credentials after bounded attempts without printing the token", function()
      local sb = sandbox()
      local src = simple(sb)
      local web = gitserve.http(sb.srv, { user = "x-access-token", token = TOKEN })
      local ok, err = pcall(function()
        local r = sb.moonops({ "promote", "--from", src, "--to", web.url("dst-moonops.git"), "--yes" },
          { MOONOPS_GIT_TOKEN = "wrong-token-0815" })
        assert.equal(1, r.code)
        assert.matches("authentication failed .* after 3 attempts", r.stderr)
        assert.is_nil((r.stdout .. r.stderr):find("wrong-token-0815", 1, true))
        r = sb.moonops({ "promote", "--from", src, "--to", web.url("dst-moonops.git"), "--yes" })
        assert.equal(1, r.code)
        assert.matches("authentication required", r.stderr)
      end)
      web.stop()
      assert(ok, err)
    end)

    it("refuses a dirty working copy and leaves it and the target alone", function()
      local sb = sandbox()
      local src, dst = simple(sb)
      local before = sb.tip(dst)
      assert.equal(0, sb.moonops({ "promote", "--from", src, "--to", dst, "--dry-run" }).code)
      local copy = sb.cwd .. "/.moonops/promote/" .. T.sh("ls " .. T.q(sb.cwd .. "/.moonops/promote")):match("[^\n]+")
      T.write(copy .. "/g", "local edit\n")
      local r = sb.moonops({ "promote", "--from", src, "--to", dst, "--yes" })
      assert.equal(1, r.code)
      assert.matches("has local changes: g %(modified%)", r.stderr)
      assert.equal("local edit\n", T.read(copy .. "/g"))
      assert.equal(before, sb.tip(dst))
    end)

    it("names a branch that does not exist on either side", function()
      local sb = sandbox()
      local src, dst = simple(sb)
      local r = sb.moonops({ "promote", "--from", src, "--to", dst, "--yes", "--branch", "release" })
      assert.equal(1, r.code)
      assert.matches("branch release not found in .*dst%-moonops%.git", r.stderr)
      sb.git(dst, "git branch release main")
      r = sb.moonops({ "promote", "--from", src, "--to", dst, "--yes", "--branch", "release" })
      assert.equal(1, r.code)
      assert.matches("branch release not found in .*src%.git", r.stderr)
    end)
  end)
end)

describe("moonops promote between workspaces over ssh", function()
  after_each(T.cleanup)
  -- one sshd for these cases; each serves its own sandbox's repositories by absolute path
  local srv
  setup(function() srv = gitserve.ssh("/") end)
  teardown(function() srv.stop() end)

  local PASSPHRASE = "deploy key passphrase 31"

  -- A sandbox with the same-lines scenario built.
  local function scenario()
    local sb = sandbox()
    build(sb, { base = { f = "1\n2\n3\n4\n5\n" }, src = { { f = "1\nSOURCE\n3\n4\n5\n" } },
      dst = { { f = "1\nTARGET\n3\n4\nT5\n", g = "target only\n" } } })
    srv.known_hosts(sb.home)
    return sb
  end
  -- moonops.yml (in the sandbox's cwd) naming the source and target as workspaces over ssh
  -- with `key` (relative to moonops.yml) and its passphrase.
  local function workspaces(sb, key)
    T.write(sb.cwd .. "/moonops.yml", table.concat({
      "workspaces:",
      "  - name: ws-dev",
      "    repository: " .. srv.url(sb.srv .. "/src.git"),
      "    ssh_key_file: " .. key,
      "    ssh_key_passphrase_env: TEST_DEPLOY_KEY_PASSPHRASE",
      "  - name: ws-staging",
      "    repository: " .. srv.url(sb.srv .. "/dst-moonops.git"),
      "    ssh_key_file: " .. key,
      "    ssh_key_passphrase_env: TEST_DEPLOY_KEY_PASSPHRASE",
      "promotion: [ws-dev, ws-staging]",
      "",
    }, "\n"))
  end
  local function promote(sb)
    return sb.moonops({ "promote", "--to", "ws-staging", "--yes", "--json" },
      { TEST_DEPLOY_KEY_PASSPHRASE = PASSPHRASE, SSH_AUTH_SOCK = false, LSAN_OPTIONS = gitserve.SSH_LSAN_OPTIONS })
  end

  it("promotes with the workspace's ssh_key_file to the tree the git CLI gives", function()
    local sb = scenario()
    local _, pub = gitserve.keygen(sb.cwd .. "/keys/deploy_key", { passphrase = PASSPHRASE })
    srv.authorize(pub)
    workspaces(sb, "keys/deploy_key")
    local mbare, gbare = sb.srv .. "/dst-moonops.git", sb.srv .. "/dst-git.git"
    local before = sb.tip(mbare)
    local r = promote(sb)
    assert.equal(0, r.code, r.stderr)
    local out = json.decode(r.stdout)
    assert.equal("pushed", out.status)
    assert.equal(before, out.old_commit)
    assert.equal(out.commit, sb.tip(mbare))
    assert.is_nil((r.stdout .. r.stderr):find(PASSPHRASE, 1, true))
    -- the git CLI's flow on the same repositories (by path: the transport does not change the tree)
    local cli_out, cli_ok = manual(sb, { cli = function(repo) return sb.srv .. "/" .. repo end })
    assert.is_true(cli_ok, cli_out)
    assert.equal(sb.git(gbare, "git rev-parse main^{tree}"), sb.git(mbare, "git rev-parse main^{tree}"))
    assert.equal(parents(sb, gbare), parents(sb, mbare))
    assert.equal(before .. "\n" .. sb.tip(sb.srv .. "/src.git"), parents(sb, mbare))
  end)

  it("fails clearly with a key the server refuses, or one that is missing, leaving the target alone", function()
    local sb = scenario()
    gitserve.keygen(sb.cwd .. "/keys/wrong_key", { passphrase = PASSPHRASE }) -- never authorized
    workspaces(sb, "keys/wrong_key")
    local mbare = sb.srv .. "/dst-moonops.git"
    local before = sb.tip(mbare)
    local r = promote(sb)
    assert.equal(1, r.code, r.stderr)
    assert.matches("ssh authentication as " .. srv.user .. " failed: ssh key " .. (sb.cwd .. "/keys/wrong_key"):gsub("%p",
      "%%%0") .. " rejected", r.stderr)
    assert.equal("failed", json.decode(r.stdout).status)
    assert.is_nil((r.stdout .. r.stderr):find(PASSPHRASE, 1, true))
    assert.equal(before, sb.tip(mbare))
    workspaces(sb, "keys/nowhere")
    r = promote(sb)
    assert.equal(1, r.code, r.stderr)
    assert.matches("ssh key " .. (sb.cwd .. "/keys/nowhere"):gsub("%p", "%%%0") .. ": No such file or directory", r.stderr)
    assert.equal(before, sb.tip(mbare))
  end)
end)
