-- moonops.git against the git CLI and real servers (git daemon, smart HTTP with Basic auth,
-- OpenSSH's sshd).
local T = require "support.t"
local gitserve = require "support.gitserve"
local git = require "moonops.git"
local json = require "moonops.json"

local AUTHOR = { name = "Test Author", email = "author@example.com" }

-- The git CLI with a private HOME and no system config, in `dir`.
local function G(home, dir, cmd)
  local out, ok, code = T.sh(string.format("cd %s && export GIT_CONFIG_NOSYSTEM=1 HOME=%s "
    .. "GIT_AUTHOR_DATE='2024-01-01T00:00:00Z' GIT_COMMITTER_DATE='2024-01-01T00:00:00Z' && { %s; } 2>&1",
    T.q(dir), T.q(home), cmd))
  assert(ok, string.format("`%s` failed (%s): %s", cmd, tostring(code), out))
  return (out:gsub("%s+$", ""))
end

-- A fresh sandbox: home with user.name/email, helpers to make repositories.
local function sandbox()
  local root = T.tmpdir()
  local home = root .. "/home"
  os.execute("mkdir -p " .. T.q(home))
  G(home, root, "git config --global user.name 'Test User' && git config --global user.email test@example.com"
    .. " && git config --global init.defaultBranch main")
  local sb = { root = root, home = home }
  function sb.git(dir, cmd) return G(home, dir, cmd) end
  -- A work repository with files {path = content}; returns its directory.
  function sb.repo(name, files)
    local dir = root .. "/" .. name
    sb.git(root, "git init -q " .. T.q(name))
    for path, content in pairs(files or {}) do T.write(dir .. "/" .. path, content) end
    sb.git(dir, "git add -A && git commit -q --allow-empty -m initial")
    return dir
  end
  function sb.commit(dir, files, message)
    for path, content in pairs(files) do
      if content == false then
        os.remove(dir .. "/" .. path)
      else
        T.write(dir .. "/" .. path, content)
      end
    end
    sb.git(dir, "git add -A && git commit -q -m " .. T.q(message or "change"))
    return sb.git(dir, "git rev-parse HEAD")
  end
  return sb
end

local function sorted_paths(list)
  local out = {}
  for _, e in ipairs(list) do out[#out + 1] = e.path .. "=" .. (e.status or e.change or e.kind) end
  table.sort(out)
  return out
end

describe("moonops.git", function()
  after_each(T.cleanup)

  describe("opening and inspecting", function()
    it("opens a work tree and reports head, path and workdir", function()
      local sb = sandbox()
      local dir = sb.repo("w", { ["a.txt"] = "a\n" })
      local repo <close> = assert(git.open(dir))
      local head = repo:head()
      assert.equal("refs/heads/main", head.ref)
      assert.equal("main", head.branch)
      assert.equal(sb.git(dir, "git rev-parse HEAD"), head.commit)
      assert.is_false(head.unborn)
      assert.equal(dir .. "/.git/", repo:path())
      assert.equal(dir .. "/", repo:workdir())
    end)

    it("fails to open a directory that is not a repository, naming it", function()
      local sb = sandbox()
      local repo, err, code = git.open(sb.root)
      assert.is_nil(repo)
      assert.matches("open " .. sb.root:gsub("%p", "%%%0"), err)
      assert.equal("ENOTFOUND", code)
    end)

    it("initialises bare and work repositories with an unborn branch", function()
      local sb = sandbox()
      local bare <close> = assert(git.init(sb.root .. "/b.git", { bare = true, branch = "trunk" }))
      assert.is_nil(bare:workdir())
      local head = bare:head()
      assert.is_true(head.unborn)
      assert.equal("refs/heads/trunk", head.ref)
      assert.equal("trunk", sb.git(sb.root .. "/b.git", "git symbolic-ref --short HEAD"))
    end)

    it("raises on use of a closed repository, and closing twice is harmless", function()
      local sb = sandbox()
      local repo = assert(git.open(sb.repo("w")))
      repo:close()
      repo:close()
      assert.has_error(function() repo:head() end, "use of a closed git repository")
    end)

    it("resolves revisions like git rev-parse, peeling annotated tags", function()
      local sb = sandbox()
      local dir = sb.repo("w", { f = "1" })
      local second = sb.commit(dir, { f = "2" })
      sb.git(dir, "git tag -a v1 -m release HEAD~1")
      local repo <close> = assert(git.open(dir))
      assert.equal(second, repo:resolve("HEAD"))
      assert.equal(sb.git(dir, "git rev-parse HEAD~1"), repo:resolve("v1"))
      assert.equal(sb.git(dir, "git rev-parse HEAD^{tree}"), repo:resolve("HEAD^{tree}"))
      local none, err, code = repo:resolve("no-such-branch")
      assert.is_nil(none)
      assert.matches("resolve no%-such%-branch", err)
      assert.equal("ENOTFOUND", code)
      assert.has_error(function() repo:resolve() end)
    end)

    it("reports status, cleanliness and the merge state", function()
      local sb = sandbox()
      local dir = sb.repo("w", { f = "base\n", g = "keep\n" })
      local repo <close> = assert(git.open(dir))
      assert.is_true(repo:is_clean())
      assert.equal("none", repo:state())
      T.write(dir .. "/f", "changed\n")
      T.write(dir .. "/new", "x")
      os.remove(dir .. "/g")
      assert.is_false(repo:is_clean())
      assert.same({ "f=modified", "g=deleted", "new=untracked" }, sorted_paths(repo:status()))
      sb.git(dir, "git checkout -q -- f g && rm new")
      assert.is_true(repo:is_clean())
      T.write(dir .. "/new", "x")
      assert.is_true(repo:is_clean({ untracked = false }))
      os.remove(dir .. "/new")
      -- a merge stopped on a conflict
      sb.git(dir, "git checkout -q -b side && echo side > f && git commit -qam side && git checkout -q main"
        .. " && echo main > f && git commit -qam main")
      T.sh(string.format("cd %s && env GIT_CONFIG_NOSYSTEM=1 HOME=%s git merge side >/dev/null 2>&1", T.q(dir), T.q(sb.home)))
      assert.equal("merge", repo:state())
      assert.same({ "f=conflicted" }, sorted_paths(repo:status()))
    end)
  end)

  describe("history and content", function()
    it("lists the log newest first with parents, author and message", function()
      local sb = sandbox()
      local dir = sb.repo("w", { f = "1" })
      sb.commit(dir, { f = "2" }, "second\n\nbody")
      local repo <close> = assert(git.open(dir))
      local log = repo:log("HEAD")
      assert.equal(2, #log)
      assert.equal(sb.git(dir, "git rev-parse HEAD"), log[1].sha)
      assert.same({ log[2].sha }, log[1].parents)
      assert.same({}, log[2].parents)
      assert.equal("Test User", log[1].author)
      assert.equal("test@example.com", log[1].email)
      assert.equal(1704067200, log[1].time)
      assert.equal("second\n\nbody\n", log[1].message)
      assert.equal(1, #repo:log("HEAD", { limit = 1 }))
      assert.is_nil(repo:log("nope"))
    end)

    it("reads a file at a commit, and reports a missing one", function()
      local sb = sandbox()
      local dir = sb.repo("w", { ["d/f.bin"] = "a\0b" })
      sb.commit(dir, { ["d/f.bin"] = "new" })
      local repo <close> = assert(git.open(dir))
      assert.equal("a\0b", repo:read("HEAD~1", "d/f.bin"))
      assert.equal("new", repo:read("HEAD", "d/f.bin"))
      local none, err, code = repo:read("HEAD", "d/missing")
      assert.is_nil(none)
      assert.equal("read HEAD:d/missing: no such file", err)
      assert.equal("ENOENT", code)
      assert.equal("EISDIR", select(3, repo:read("HEAD", "d")))
    end)

    it("exports a tree into a plain directory with modes and symlinks, no .git", function()
      local sb = sandbox()
      local dir = sb.repo("w", { ["run.sh"] = "#!/bin/sh\n", ["a/b/c.txt"] = "deep\n", ["meltano.yml"] = "x: 1\n" })
      sb.git(dir, "chmod +x run.sh && ln -s a/b/c.txt link && git add -A && git commit -qm more")
      local repo <close> = assert(git.open(dir))
      local out = sb.root .. "/export"
      assert.equal(4, repo:export("HEAD", out))
      assert.equal("deep\n", T.read(out .. "/a/b/c.txt"))
      assert.equal("a/b/c.txt", (T.sh("readlink " .. T.q(out .. "/link")):gsub("%s+$", "")))
      local _, exec = T.sh("test -x " .. T.q(out .. "/run.sh"))
      local _, plain = T.sh("test -x " .. T.q(out .. "/meltano.yml"))
      assert.is_true(exec)
      assert.is_false(plain)
      local _, has_git = T.sh("test -e " .. T.q(out .. "/.git"))
      assert.is_false(has_git)
      -- only matching paths
      local some = sb.root .. "/some"
      assert.equal(1, repo:export("HEAD", some, { match = { "*.yml" } }))
      assert.equal("", (T.sh("cd " .. T.q(some) .. " && find . -type f ! -name meltano.yml")))
      -- a file where a directory is needed
      T.write(sb.root .. "/blocked", "x")
      local ok, err = repo:export("HEAD", sb.root .. "/blocked")
      assert.is_nil(ok)
      assert.matches("export HEAD", err)
    end)

    it("diffs two commits with per-file status, line counts, renames and binary files", function()
      local sb = sandbox()
      local dir = sb.repo("w", { keep = "1\n2\n3\n", gone = "bye\n", old = string.rep("same line\n", 20),
        img = "\0\1\2" })
      sb.commit(dir, { keep = "1\ntwo\n3\n4\n", gone = false, old = false, new = string.rep("same line\n", 20),
        added = "hi\n", img = "\0\1\3" })
      local repo <close> = assert(git.open(dir))
      local by = {}
      for _, d in ipairs(repo:diff("HEAD~1", "HEAD")) do by[d.path] = d end
      assert.equal("modified", by.keep.status)
      assert.equal(2, by.keep.additions)
      assert.equal(1, by.keep.deletions)
      assert.equal("deleted", by.gone.status)
      assert.equal("renamed", by.new.status)
      assert.equal("old", by.new.old_path)
      assert.equal("added", by.added.status)
      assert.is_true(by.img.binary)
      assert.is_false(by.keep.binary)
      -- from the empty tree
      assert.equal(4, #repo:diff(nil, "HEAD~1"))
    end)

    it("diffs with hunks and lines, limited to paths, with context as asked", function()
      local sb = sandbox()
      local lines = {}
      for i = 1, 20 do lines[i] = "line " .. i end
      local text = table.concat(lines, "\n") .. "\n"
      local dir = sb.repo("w", { f = text, other = "x\n", img = "\0\1\2" })
      sb.commit(dir, { f = text:gsub("line 3\n", "THREE\n"):gsub("line 18\n", ""), other = "y\n", img = "\0\1\3" })
      local repo <close> = assert(git.open(dir))
      local d = assert(repo:diff("HEAD~1", "HEAD", { lines = true, paths = { "f", "img" } }))
      table.sort(d, function(a, b) return a.path < b.path end)
      assert.same({ "f", "img" }, { d[1].path, d[2].path })
      local f = d[1]
      assert.equal(2, #f.hunks)
      local h1, h2 = f.hunks[1], f.hunks[2]
      assert.same({ 1, 6, 1, 6, 1, 1 }, { h1.old_start, h1.old_lines, h1.new_start, h1.new_lines, h1.additions, h1.deletions })
      assert.equal("@@ -1,6 +1,6 @@", h1.header)
      assert.same({ origin = "-", old_line = 3, text = "line 3" }, h1.lines[3])
      assert.same({ origin = "+", new_line = 3, text = "THREE" }, h1.lines[4])
      assert.same({ origin = " ", old_line = 1, new_line = 1, text = "line 1" }, h1.lines[1])
      assert.same({ 15, 6, 15, 5, 0, 1 }, { h2.old_start, h2.old_lines, h2.new_start, h2.new_lines, h2.additions, h2.deletions })
      -- a binary file has no hunks
      assert.is_true(d[2].binary)
      assert.same({}, d[2].hunks)
      -- without context each change is its own hunk; without lines= there are no lines
      local z = assert(repo:diff("HEAD~1", "HEAD", { hunks = true, context = 0, paths = { "f" } }))
      assert.equal(1, #z)
      assert.same({ 3, 1, 3, 1 }, { z[1].hunks[1].old_start, z[1].hunks[1].old_lines, z[1].hunks[1].new_start,
        z[1].hunks[1].new_lines })
      assert.same({ 18, 1, 17, 0 }, { z[1].hunks[2].old_start, z[1].hunks[2].old_lines, z[1].hunks[2].new_start,
        z[1].hunks[2].new_lines })
      assert.is_nil(z[1].hunks[1].lines)
      -- the git CLI agrees on the ranges
      assert.matches("@@ %-3 %+3 @@.*@@ %-18 %+17,0 @@", sb.git(dir, "git diff -U0 HEAD~1 HEAD -- f"):gsub("\n", " "))
      -- an empty path list selects nothing; a path that did not change gives nothing
      assert.same({}, repo:diff("HEAD~1", "HEAD", { hunks = true, paths = {} }))
      assert.same({}, repo:diff("HEAD~1", "HEAD", { hunks = true, paths = { "nope" } }))
      assert.has_error(function() repo:diff("HEAD~1", "HEAD", { context = -1 }) end)
      assert.has_error(function() repo:diff("HEAD~1", "HEAD", { paths = { 1 } }) end)
    end)

    it("fetches from a local path by sharing its packs and loose objects, as git clone --local does", function()
      local sb = sandbox()
      local src = sb.repo("src", { a = "1\n" })
      sb.git(src, "git gc -q")
      local tip = sb.commit(src, { a = "2\n", b = "loose\n" }) -- loose objects on top of a pack
      local dst = sb.root .. "/dst"
      local repo <close> = assert(git.init(dst, { bare = true }))
      assert.is_true(repo:fetch(src, { "+refs/heads/main:refs/remotes/src/main" }))
      assert.equal(tip, repo:resolve("refs/remotes/src/main"))
      local pack = sb.git(src, "ls .git/objects/pack/*.pack"):match("[^/]+%.pack$")
      -- the pack is the same file (hard link), not a rebuilt one
      assert.equal(sb.git(src, "stat -c %i .git/objects/pack/" .. pack), sb.git(dst, "stat -c %i objects/pack/" .. pack))
      assert.equal("", sb.git(dst, "git fsck --connectivity-only --no-dangling refs/remotes/src/main 2>&1"
        .. " | grep -v -e '^Checking' -e '^notice' || true"))
      assert.equal("2\n", repo:read(tip, "a"))
      -- a file:// URL too, and share_local=false goes through libgit2's own pack
      local tip2 = sb.commit(src, { c = "3\n" })
      local plain = sb.root .. "/plain"
      local r2 <close> = assert(git.init(plain, { bare = true }))
      assert.is_true(r2:fetch("file://" .. src, { "+refs/heads/main:refs/remotes/src/main" }, { share_local = false }))
      assert.equal(tip2, r2:resolve("refs/remotes/src/main"))
      assert.equal("", sb.git(plain, "ls objects/pack | grep -F " .. T.q(pack) .. " || true"))
      assert.is_true(repo:fetch("file://" .. src, { "+refs/heads/main:refs/remotes/src/main" }))
      assert.equal(tip2, repo:resolve("refs/remotes/src/main"))
    end)

    it("commits the work tree and moves refs only when they are where expected", function()
      local sb = sandbox()
      local dir = sb.repo("w", { f = "1" })
      local repo <close> = assert(git.open(dir))
      local first = repo:resolve("HEAD")
      T.write(dir .. "/f", "2")
      T.write(dir .. "/g", "new")
      assert.is_true(repo:add_all())
      local sha = assert(repo:commit({ message = "from lua", author = AUTHOR }))
      assert.equal(sha, sb.git(dir, "git rev-parse HEAD"))
      assert.equal(first, sb.git(dir, "git rev-parse HEAD~1"))
      assert.equal("Test Author <author@example.com>", sb.git(dir, "git log -1 --format='%an <%ae>'"))
      assert.equal("", sb.git(dir, "git status --porcelain"))
      -- update_ref with an expected old value
      assert.is_true(repo:update_ref("refs/heads/copy", sha))
      local ok, err, code = repo:update_ref("refs/heads/copy", first, { expect = first })
      assert.is_nil(ok)
      assert.matches("update refs/heads/copy", err)
      assert.equal("EMOVED", code)
      assert.is_true(repo:update_ref("refs/heads/copy", first, { expect = sha }))
      assert.equal(first, sb.git(dir, "git rev-parse copy"))
      -- a ref that must not exist yet
      assert.equal("EMOVED", select(3, repo:update_ref("refs/heads/copy", sha, { expect = "" })))
      assert.is_true(repo:update_ref("refs/moonops/backup/x", sha, { expect = "" }))
      -- checkout of a branch moves HEAD to it
      assert.is_true(repo:checkout("copy"))
      assert.equal("refs/heads/copy", repo:head().ref)
      assert.equal("1", T.read(dir .. "/f"))
    end)
  end)

  describe("populating a new work tree", function()
    for _, attrs in ipairs({ false, true }) do
      it(attrs and "falls back to a full checkout when .gitattributes could filter files"
        or "writes the files and a clean index in one pass", function()
        local sb = sandbox()
        local files = { ["a/b.txt"] = "b\n", ["run.sh"] = "#!/bin/sh\n" }
        if attrs then files[".gitattributes"] = "*.txt text\n" end
        local src = sb.repo("src", files)
        local repo <close> = assert(git.init(sb.root .. "/w", { branch = "main" }))
        assert(repo:fetch(src, { "+refs/heads/main:refs/remotes/origin/main" }))
        assert(repo:update_ref("refs/heads/main", "refs/remotes/origin/main"))
        assert.is_true(repo:checkout("main", { force = true, populate = true }))
        assert.equal("b\n", T.read(sb.root .. "/w/a/b.txt"))
        -- the index has each file's stat data: git finds nothing to look at again
        assert.equal("", sb.git(sb.root .. "/w", "git diff-files --name-only"))
        assert.is_true(repo:is_clean())
        assert.equal("", sb.git(sb.root .. "/w", "git status --porcelain"))
        T.write(sb.root .. "/w/a/b.txt", "changed\n")
        assert.same({ "a/b.txt=modified" }, sorted_paths(repo:status()))
      end)
    end
  end)

  describe("merging in memory", function()
    local function two_sided(sb, base_files, ours_files, theirs_files)
      local dir = sb.repo("w", base_files)
      sb.git(dir, "git branch theirs")
      sb.commit(dir, ours_files, "ours")
      sb.git(dir, "git checkout -q theirs")
      sb.commit(dir, theirs_files, "theirs")
      sb.git(dir, "git checkout -q main")
      return dir
    end

    it("merges like git merge -X theirs: same tree, both tips as parents, no ref touched", function()
      local sb = sandbox()
      local dir = two_sided(sb, { f = "a\nb\nc\n", g = "1\n" }, { f = "a\nOURS\nc\n", g = "1\n2\n" },
        { f = "a\nTHEIRS\nc\n", h = "new\n" })
      local repo <close> = assert(git.open(dir))
      local before = repo:resolve("HEAD")
      local r = assert(repo:merge("main", "theirs", { favor = "theirs", author = AUTHOR, message = "m" }))
      assert.is_false(r.up_to_date)
      assert.is_false(r.fast_forward)
      assert.is_false(r.unrelated)
      assert.same({}, r.conflicts)
      assert.equal(before, repo:resolve("HEAD"))
      assert.same({ before, repo:resolve("theirs") }, repo:log(r.commit, { limit = 1 })[1].parents)
      assert.same({ "f=modified", "h=added" }, sorted_paths(r.files))
      sb.git(dir, "git merge -q -X theirs --no-edit theirs")
      assert.equal(sb.git(dir, "git rev-parse HEAD^{tree}"), r.tree)
      assert.equal("a\nTHEIRS\nc\n", repo:read(r.commit, "f"))
    end)

    it("refuses unrelated histories unless allowed, then keeps both tips as parents", function()
      local sb = sandbox()
      local a = sb.repo("a", { f = "ours\n", only_a = "1" })
      local b = sb.repo("b", { f = "theirs\n", only_b = "2" })
      sb.git(a, "git fetch -q " .. T.q(b) .. " main:refs/remotes/b/main")
      local repo <close> = assert(git.open(a))
      local r, err, code = repo:merge("HEAD", "refs/remotes/b/main", { favor = "theirs" })
      assert.is_nil(r)
      assert.matches("unrelated histories", err)
      assert.equal("EUNRELATED", code)
      r = assert(repo:merge("HEAD", "refs/remotes/b/main", { favor = "theirs", allow_unrelated = true, author = AUTHOR }))
      assert.is_true(r.unrelated)
      assert.same({}, r.conflicts)
      assert.equal("theirs\n", repo:read(r.commit, "f"))
      assert.same({ repo:resolve("HEAD"), repo:resolve("refs/remotes/b/main") }, repo:log(r.commit, { limit = 1 })[1].parents)
      sb.git(a, "git merge -q -X theirs --allow-unrelated-histories --no-edit b/main")
      assert.equal(sb.git(a, "git rev-parse HEAD^{tree}"), r.tree)
    end)

    it("reports fast-forward and up-to-date without making a commit", function()
      local sb = sandbox()
      local dir = sb.repo("w", { f = "1" })
      sb.git(dir, "git branch old")
      local tip = sb.commit(dir, { f = "2" })
      local repo <close> = assert(git.open(dir))
      local ff = assert(repo:merge("old", "main", { favor = "theirs" }))
      assert.is_true(ff.fast_forward)
      assert.equal(tip, ff.commit)
      assert.same({ "f=modified" }, sorted_paths(ff.files))
      local same = assert(repo:merge("main", "old", { favor = "theirs" }))
      assert.is_true(same.up_to_date)
      assert.equal(tip, same.commit)
      assert.same({}, same.files)
    end)

    it("lists conflicts -X theirs cannot resolve (modify/delete) and makes no commit", function()
      local sb = sandbox()
      local dir = two_sided(sb, { f = "base\n", g = "g\n" }, { f = "ours changed\n" }, { f = false })
      local repo <close> = assert(git.open(dir))
      local r = assert(repo:merge("main", "theirs", { favor = "theirs" }))
      assert.is_nil(r.commit)
      assert.equal(1, #r.conflicts)
      assert.equal("f", r.conflicts[1].path)
      assert.equal("modify/delete", r.conflicts[1].kind)
      assert.is_string(r.conflicts[1].ours)
      assert.is_nil(r.conflicts[1].theirs)
      assert.has_error(function() repo:merge("main", "theirs", { favor = "sideways" }) end)
    end)

    it("reports each rename conflict once, with the paths of both sides", function()
      local text = string.rep("a line long enough for rename detection\n", 20)
      local other = string.rep("another file, another text\n", 20)
      local function conflicts(base, ours, theirs)
        local sb = sandbox()
        local dir = two_sided(sb, base, ours, theirs)
        local repo <close> = assert(git.open(dir))
        local r = assert(repo:merge("main", "theirs", { favor = "theirs" }))
        assert.is_nil(r.commit)
        return r.conflicts
      end
      -- one file renamed differently on each side (git: rename/rename 1to2)
      assert.same({ { path = "a.sql", kind = "rename/rename", ours_path = "b.sql", theirs_path = "c.sql" } },
        conflicts({ ["a.sql"] = text }, { ["a.sql"] = false, ["b.sql"] = text }, { ["a.sql"] = false, ["c.sql"] = text }))
      -- deleted by ours, renamed by theirs
      assert.same({ { path = "a.sql", kind = "delete/rename", theirs_path = "c.sql" } },
        conflicts({ ["a.sql"] = text, keep = "k\n" }, { ["a.sql"] = false }, { ["a.sql"] = false, ["c.sql"] = text }))
      -- two files renamed to one name (git: rename/rename 2to1)
      assert.same({ { path = "h.sql", kind = "rename/rename", ours_from = "g.sql", theirs_from = "f.sql" } },
        conflicts({ ["f.sql"] = text, ["g.sql"] = other }, { ["g.sql"] = false, ["h.sql"] = other },
          { ["f.sql"] = false, ["h.sql"] = text }))
    end)
  end)

  describe("pushing to a repository on a local path", function()
    -- srv/dst.git (bare, the target) and a bare working copy `wc` that has fetched it
    -- and `src` (a work repository with a side branch the push must not carry).
    local function setup(sb, opts)
      opts = opts or {}
      local src = sb.repo("src", opts.src_files or { ["pipelines/a.sql"] = "select 1\n", shared = "s\n" })
      sb.commit(src, { ["pipelines/b.sql"] = "select 2\n" }, "source two")
      sb.git(src, "git checkout -q -b side && echo only-on-side > side.txt && git add side.txt"
        .. " && git commit -qm side && git checkout -q main")
      local dst_work = sb.repo("dst-work", opts.dst_files or { ["target.txt"] = "t\n" })
      if opts.dst_steps then opts.dst_steps(dst_work) end
      os.execute("mkdir -p " .. T.q(sb.root .. "/srv"))
      sb.git(sb.root, "git clone -q --mirror dst-work srv/dst.git")
      local wc = assert(git.init(sb.root .. "/wc", { bare = true }))
      assert(wc:fetch(sb.root .. "/srv/dst.git", { "+refs/heads/main:refs/remotes/origin/main" }))
      assert(wc:fetch(src, { "+refs/heads/*:refs/remotes/src/*" }))
      return wc, src, sb.root .. "/srv/dst.git"
    end
    local function merged(wc, message)
      local r = assert(wc:merge("refs/remotes/origin/main", "refs/remotes/src/main",
        { favor = "theirs", allow_unrelated = true, message = message or "merge\n" }))
      assert(wc:update_ref("refs/moonops/promote/main", r.commit))
      return r.commit
    end
    -- what git would have to send: objects of `tip` not reachable from the target's refs
    -- and not already in its object store (the git CLI as the oracle)
    local function missing(sb, wc_path, bare, tip)
      local refs = sb.git(bare, "git for-each-ref --format='%(objectname)'"):gsub("\n", " ")
      return sb.git(wc_path, "git rev-list --objects " .. tip .. " --not " .. refs
        .. " | cut -d' ' -f1 | git --git-dir=" .. T.q(bare) .. " cat-file --batch-check='%(objectname) %(objecttype)'"
        .. " | awk '$2 == \"missing\" { print $1 }' | sort")
    end
    -- the object ids in the packs of `bare` that are not in `before` (from pack_files)
    local function new_objects(sb, bare, before)
      local out = {}
      for idx in sb.git(bare, "ls objects/pack/*.idx 2>/dev/null || true"):gmatch("[^\n]+") do
        if not before[idx] then
          out[#out + 1] = sb.git(bare, "git show-index < " .. T.q(idx) .. " | cut -d' ' -f2 | sort")
        end
      end
      return table.concat(out, "\n")
    end
    -- the files of objects/pack, as a set
    local function pack_files(sb, bare)
      local set = {}
      for f in sb.git(bare, "ls objects/pack"):gmatch("[^\n]+") do set["objects/pack/" .. f] = true end
      return set
    end

    it("writes exactly the objects the target lacks as one pack, then moves the ref", function()
      local sb = sandbox()
      local wc <close>, src, bare = setup(sb)
      local old = wc:resolve("refs/remotes/origin/main")
      local tip = merged(wc) -- unrelated histories: the merge has both tips as parents
      local want = missing(sb, sb.root .. "/wc", bare, tip)
      local before = pack_files(sb, bare)
      local events = {}
      assert.is_true(wc:push(bare, { "refs/moonops/promote/main:refs/heads/main" },
        { expect = old, progress = function(e) events[#events + 1] = e end }))
      assert.equal(tip, sb.git(bare, "git rev-parse main"))
      assert.equal(old .. "\n" .. sb.git(src, "git rev-parse main"), sb.git(bare, "git rev-parse main^@"))
      assert.equal(want, new_objects(sb, bare, before))
      assert.equal("", sb.git(bare, "git fsck --full --no-dangling 2>&1 | grep -v -e '^Checking' -e '^notice' || true"))
      -- the source's other branch stays out of the target
      local side_blob = sb.git(src, "git rev-parse side:side.txt")
      assert.is_false(select(2, T.sh("git --git-dir=" .. T.q(bare) .. " cat-file -e " .. side_blob .. " 2>/dev/null")))
      -- progress: the objects written, as "pushing"
      assert.is_true(#events > 0)
      local last = events[#events]
      assert.equal("pushing", last.phase)
      assert.equal(select(2, want:gsub("\n", "")) + 1, last.total)
      assert.equal(last.total, last.current)
      assert.is_true(last.bytes > 0)
      -- pushing the same again changes nothing
      local after = pack_files(sb, bare)
      assert.is_true(wc:push(bare, { "refs/moonops/promote/main:refs/heads/main" }, { expect = tip }))
      assert.same(after, pack_files(sb, bare))
    end)

    it("compresses a large push on several threads into one valid pack", function()
      local sb = sandbox()
      local wc <close>, src, bare = setup(sb)
      -- 400 more commits on the source, each with a new file in its own directory
      local stream = {}
      for c = 1, 400 do
        local body = string.format("-- change %d\nselect %d as id\n", c, c)
        stream[#stream + 1] = string.format("commit refs/heads/main\ncommitter S <s@example.com> %d +0000\n"
          .. "data 7\nchange\n%sM 100644 inline d%03d/f%d.sql\ndata %d\n%s\n", 1700000000 + c,
          c == 1 and "from refs/heads/main^0\n" or "", c % 50, c, #body, body)
      end
      T.write(sb.root .. "/stream", table.concat(stream))
      sb.git(src, "git fast-import --quiet < ../stream")
      assert(wc:fetch(src, { "+refs/heads/*:refs/remotes/src/*" }))
      local old = wc:resolve("refs/remotes/origin/main")
      local tip = merged(wc)
      local want = missing(sb, sb.root .. "/wc", bare, tip)
      assert.is_true(select(2, want:gsub("\n", "")) > 1500)
      local before = pack_files(sb, bare)
      local seen = {}
      assert.is_true(wc:push(bare, { "refs/moonops/promote/main:refs/heads/main" },
        { expect = old, progress = function(e) seen[#seen + 1] = e.current end }))
      assert.equal(tip, sb.git(bare, "git rev-parse main"))
      assert.equal(want, new_objects(sb, bare, before))
      assert.equal("", sb.git(bare, "git fsck --full --no-dangling 2>&1 | grep -v -e '^Checking' -e '^notice' || true"))
      assert.is_true(#seen > 1)
      for i = 2, #seen do assert.is_true(seen[i] > seen[i - 1]) end
    end)

    it("leaves out what the target already has, and creates a new ref only where none is", function()
      local sb = sandbox()
      local wc <close>, src, bare = setup(sb, {
        -- the target's other branch already holds the source's pipelines/ tree and `shared`
        dst_steps = function(dir)
          sb.git(dir, "git checkout -q -b other && mkdir -p pipelines && printf 'select 1\\n' > pipelines/a.sql"
            .. " && printf 'select 2\\n' > pipelines/b.sql && printf 's\\n' > shared && git add -A"
            .. " && git commit -qm other && git checkout -q main")
        end })
      local tip = merged(wc)
      local want = missing(sb, sb.root .. "/wc", bare, tip)
      local tree = sb.git(src, "git rev-parse main:pipelines")
      assert.equal(tree, sb.git(bare, "git rev-parse other:pipelines"))
      local before = pack_files(sb, bare)
      assert.is_true(wc:push(bare, { "refs/moonops/promote/main:refs/heads/main" },
        { expect = wc:resolve("refs/remotes/origin/main") }))
      local sent = new_objects(sb, bare, before)
      assert.equal(want, sent)
      assert.is_nil(sent:find(tree, 1, true))
      assert.is_nil(sent:find(sb.git(src, "git rev-parse main:shared"), 1, true))
      assert.equal("", sb.git(bare, "git fsck --full --no-dangling 2>&1 | grep -v -e '^Checking' -e '^notice' || true"))
      -- a branch the target does not have yet: expect "" creates it, and only then
      assert.is_true(wc:push(bare, { "refs/remotes/src/side:refs/heads/side" }, { expect = "" }))
      assert.equal(sb.git(src, "git rev-parse side"), sb.git(bare, "git rev-parse side"))
      local ok, err, code = wc:push(bare, { "refs/remotes/src/main:refs/heads/side" }, { expect = "" })
      assert.is_nil(ok)
      assert.equal("EMOVED", code)
      assert.matches("target moved: refs/heads/side is at %x+, expected %(none%)", err)
    end)

    it("pushes nothing when the target moved since it was fetched", function()
      local sb = sandbox()
      local wc <close>, _, bare = setup(sb)
      local old = wc:resolve("refs/remotes/origin/main")
      merged(wc)
      sb.git(sb.root, "git clone -q " .. T.q(bare) .. " mover")
      local moved = sb.commit(sb.root .. "/mover", { ["target.txt"] = "moved\n" })
      sb.git(sb.root .. "/mover", "git push -q origin main")
      local before = pack_files(sb, bare)
      local ok, err, code = wc:push(bare, { "refs/moonops/promote/main:refs/heads/main" }, { expect = old })
      assert.is_nil(ok)
      assert.equal("EMOVED", code)
      assert.equal(string.format("push %s refs/heads/main: target moved: refs/heads/main is at %s, expected %s",
        bare, moved:sub(1, 12), old:sub(1, 12)), err)
      assert.equal(moved, sb.git(bare, "git rev-parse main"))
      assert.same(before, pack_files(sb, bare))
    end)

    it("does not move the ref when it moves while the objects are written", function()
      local sb = sandbox()
      local wc <close>, _, bare = setup(sb)
      local old = wc:resolve("refs/remotes/origin/main")
      merged(wc)
      local moved = sb.commit(sb.root .. "/dst-work", { ["target.txt"] = "moved\n" })
      local done = false
      local ok, err, code = wc:push(bare, { "refs/moonops/promote/main:refs/heads/main" }, { expect = old,
        progress = function()
          if not done then
            done = true
            sb.git(sb.root .. "/dst-work", "git push -q " .. T.q(bare) .. " main")
          end
        end })
      assert.is_true(done)
      assert.is_nil(ok)
      assert.equal("EMOVED", code)
      assert.matches("target moved: refs/heads/main is at " .. moved:sub(1, 12), err)
      assert.equal(moved, sb.git(bare, "git rev-parse main"))
    end)

    it("rejects a non-fast-forward push and writes nothing", function()
      local sb = sandbox()
      local wc <close>, _, bare = setup(sb)
      merged(wc)
      -- the target has a commit the working copy does not
      sb.commit(sb.root .. "/dst-work", { ["target.txt"] = "elsewhere\n" })
      sb.git(sb.root .. "/dst-work", "git push -q " .. T.q(bare) .. " main")
      local before = pack_files(sb, bare)
      local ok, err, code = wc:push(bare, { "refs/moonops/promote/main:refs/heads/main" })
      assert.is_nil(ok)
      assert.equal("EREJECTED", code)
      assert.equal("push " .. bare .. " refs/heads/main: rejected (non-fast-forward)", err)
      assert.same(before, pack_files(sb, bare))
      -- an older commit is not a fast-forward either
      assert(wc:fetch(bare, { "+refs/heads/main:refs/remotes/origin/main" }))
      assert(wc:update_ref("refs/heads/older", "refs/remotes/origin/main~1"))
      ok, err, code = wc:push(bare, { "refs/heads/older:refs/heads/main" })
      assert.is_nil(ok)
      assert.equal("EREJECTED", code)
      assert.matches("rejected %(non%-fast%-forward%)$", err)
      assert.same(before, pack_files(sb, bare))
    end)

    it("stops when the progress function raises, leaving the target as it was", function()
      local sb = sandbox()
      local wc <close>, _, bare = setup(sb)
      local old = wc:resolve("refs/remotes/origin/main")
      merged(wc)
      local before = pack_files(sb, bare)
      local ok, err = wc:push(bare, { "refs/moonops/promote/main:refs/heads/main" },
        { expect = old, progress = function() error("interrupted by the user") end })
      assert.is_nil(ok)
      assert.matches("interrupted by the user", err)
      assert.equal(old, sb.git(bare, "git rev-parse main"))
      assert.same(before, pack_files(sb, bare))
    end)

    it("goes through libgit2's transport with direct=false, and refuses a non-bare target", function()
      local sb = sandbox()
      local wc <close>, _, bare = setup(sb)
      local old = wc:resolve("refs/remotes/origin/main")
      local tip = merged(wc)
      assert.is_true(wc:push(bare, { "refs/moonops/promote/main:refs/heads/main" }, { expect = old, direct = false }))
      assert.equal(tip, sb.git(bare, "git rev-parse main"))
      assert.equal("", sb.git(bare, "git fsck --no-dangling 2>&1 | grep -v -e '^Checking' -e '^notice' || true"))
      local ok, err = wc:push(sb.root .. "/dst-work", { "refs/moonops/promote/main:refs/heads/main" })
      assert.is_nil(ok)
      assert.matches("non%-bare", err)
      assert.equal(old, sb.git(sb.root .. "/dst-work", "git rev-parse main"))
    end)

    -- An executable hook `name` in `dir` that appends to hooks.log in its working directory its
    -- name and arguments, that directory, $GIT_DIR, $GIT_PUSH_OPTION_COUNT, its stdin and where
    -- refs/heads/main is while it runs; then runs `body` (shell).
    local function hook(dir, name, body, mode)
      T.write(dir .. "/" .. name, "#!/bin/sh\n"
        .. "{ printf %s \"$(basename \"$0\")\"; for a; do printf ' %s' \"$a\"; done; echo\n"
        .. "  echo \"pwd=$(pwd -P) GIT_DIR=$GIT_DIR options=${GIT_PUSH_OPTION_COUNT-unset}\"; cat\n"
        .. "  echo \"main=$(git rev-parse --verify -q refs/heads/main)\"; } >> hooks.log\n"
        .. (body or ""))
      os.execute("chmod " .. (mode or "755") .. " " .. T.q(dir .. "/" .. name))
    end
    -- what `hook` records for one run in repository directory `dir`: pre-receive and post-receive
    -- read `stdin` and see GIT_PUSH_OPTION_COUNT=0, update and post-update take arguments
    local function ran(name, args, dir, stdin, main)
      return string.format("%s%s\npwd=%s GIT_DIR=. options=%s\n%smain=%s\n", name, args and " " .. args or "",
        dir, stdin and "0" or "unset", stdin and stdin .. "\n" or "", main)
    end
    local PUSH = { "refs/moonops/promote/main:refs/heads/main" }

    it("runs the target's hooks as git receive-pack does: pre-receive, update, the ref, post-receive, post-update",
      function()
      local sb = sandbox()
      local wc <close>, _, bare = setup(sb)
      local old = wc:resolve("refs/remotes/origin/main")
      local tip = merged(wc)
      for _, name in ipairs({ "pre-receive", "update", "post-receive", "post-update" }) do
        hook(bare .. "/hooks", name)
      end
      local other = sb.root .. "/srv/dst-git.git" -- the same target, for the git CLI
      sb.git(sb.root, "cp -a srv/dst.git " .. T.q(other))
      assert.is_true(wc:push(bare, PUSH, { expect = old }))
      assert.equal(tip, sb.git(bare, "git rev-parse main"))
      local here, line = sb.git(bare, "pwd -P"), old .. " " .. tip .. " refs/heads/main"
      assert.equal(ran("pre-receive", nil, here, line, old)
        .. ran("update", "refs/heads/main " .. old .. " " .. tip, here, nil, old)
        .. ran("post-receive", nil, here, line, tip)
        .. ran("post-update", "refs/heads/main", here, nil, tip), T.read(bare .. "/hooks.log"))
      -- git push gives its hooks the same
      sb.git(sb.root, "git --git-dir=wc push -q " .. T.q(other) .. " refs/moonops/promote/main:refs/heads/main")
      local there = sb.git(other, "pwd -P")
      assert.equal(T.read(bare .. "/hooks.log"), (T.read(other .. "/hooks.log"):gsub(there:gsub("%p", "%%%0"), here)))
    end)

    it("rejects the push when pre-receive fails, with its output, and leaves the ref alone", function()
      local sb = sandbox()
      local wc <close>, _, bare = setup(sb)
      local old = wc:resolve("refs/remotes/origin/main")
      local tip = merged(wc)
      hook(bare .. "/hooks", "pre-receive", "echo checking policy\necho 'main is frozen' >&2\nexit 1\n")
      hook(bare .. "/hooks", "update")
      hook(bare .. "/hooks", "post-receive")
      local ok, err, code = wc:push(bare, PUSH, { expect = old })
      assert.is_nil(ok)
      assert.equal("EREJECTED", code)
      assert.equal("push " .. bare .. " refs/heads/main: rejected (pre-receive hook declined; remote: checking policy"
        .. " main is frozen)", err)
      assert.equal(old, sb.git(bare, "git rev-parse main"))
      assert.equal(ran("pre-receive", nil, sb.git(bare, "pwd -P"), old .. " " .. tip .. " refs/heads/main", old),
        T.read(bare .. "/hooks.log"))
      -- the objects stay in the target, unreferenced (git gc prunes them); a later push sends none again
      sb.git(bare, "git cat-file -e " .. tip)
      local before = pack_files(sb, bare)
      os.remove(bare .. "/hooks/pre-receive")
      assert.is_true(wc:push(bare, PUSH, { expect = old }))
      assert.equal(tip, sb.git(bare, "git rev-parse main"))
      assert.same(before, pack_files(sb, bare))
    end)

    it("rejects the push when the update hook fails, after pre-receive ran", function()
      local sb = sandbox()
      local wc <close>, _, bare = setup(sb)
      local old = wc:resolve("refs/remotes/origin/main")
      local tip = merged(wc)
      hook(bare .. "/hooks", "pre-receive", "echo pre-receive passed\n")
      hook(bare .. "/hooks", "update", "echo \"$1 is protected\" >&2\nexit 3\n")
      hook(bare .. "/hooks", "post-update")
      local ok, err, code = wc:push(bare, PUSH)
      assert.is_nil(ok)
      assert.equal("EREJECTED", code)
      assert.equal("push " .. bare .. " refs/heads/main: rejected (update hook declined; remote: pre-receive passed"
        .. " refs/heads/main is protected)", err)
      assert.equal(old, sb.git(bare, "git rev-parse main"))
      local here = sb.git(bare, "pwd -P")
      assert.equal(ran("pre-receive", nil, here, old .. " " .. tip .. " refs/heads/main", old)
        .. ran("update", "refs/heads/main " .. old .. " " .. tip, here, nil, old), T.read(bare .. "/hooks.log"))
    end)

    it("takes hooks from core.hooksPath (relative to the repository), skips files not executable, runs a script without #!",
      function()
      local sb = sandbox()
      local wc <close>, _, bare = setup(sb)
      local old = wc:resolve("refs/remotes/origin/main")
      local tip = merged(wc)
      hook(bare .. "/hooks", "pre-receive", "exit 1\n")
      sb.git(bare, "git config core.hooksPath custom")
      hook(bare .. "/custom", "pre-receive", "exit 1\n", "644")
      hook(bare .. "/custom", "post-receive")
      -- a script without "#!" runs with sh, as git runs it
      local script = bare .. "/custom/post-receive"
      T.write(script, (T.read(script):gsub("^#![^\n]*\n", "")))
      assert.is_true(wc:push(bare, PUSH, { expect = old }))
      assert.equal(tip, sb.git(bare, "git rev-parse main"))
      local line = old .. " " .. tip .. " refs/heads/main"
      assert.equal(ran("post-receive", nil, sb.git(bare, "pwd -P"), line, tip), T.read(bare .. "/hooks.log"))
      -- an absolute core.hooksPath
      sb.git(bare, "git config core.hooksPath " .. T.q(sb.root .. "/shared-hooks"))
      hook(sb.root .. "/shared-hooks", "pre-receive", "echo \"no new branches\"\nexit 1\n")
      local ok, err, code = wc:push(bare, { "refs/remotes/src/side:refs/heads/side" }, { expect = "" })
      assert.is_nil(ok)
      assert.equal("EREJECTED", code)
      assert.matches("rejected %(pre%-receive hook declined; remote: no new branches%)$", err)
      assert.equal("", sb.git(bare, "git for-each-ref refs/heads/side"))
    end)

    it("kills a hook that hangs at the timeout ($MOONOPS_GIT_HOOK_TIMEOUT) with what it started", function()
      local sb = sandbox()
      local wc <close>, _, bare = setup(sb)
      local old = wc:resolve("refs/remotes/origin/main")
      local tip = merged(wc)
      -- in a moonops process of its own, whose environment sets the timeout
      local function push()
        local script = sb.root .. "/push.lua"
        T.write(script, string.format([[
local git = require "moonops.git"
local json = require "moonops.json"
local proc = require "moonops.proc"
local wc <close> = assert(git.open(%q))
local t0 = proc.monotonic()
local ok, err, code = wc:push(%q, { "refs/moonops/promote/main:refs/heads/main" })
print(json.encode({ ok = ok or false, err = err, code = code, seconds = proc.monotonic() - t0 }))
]], sb.root .. "/wc", bare))
        local r = T.moonops({ "lua", script }, { env = { MOONOPS_GIT_HOOK_TIMEOUT = "1" } })
        assert.equal(0, r.code, r.stderr)
        return json.decode(r.stdout)
      end
      local function gone(name)
        for _, f in ipairs({ name .. ".pid", name .. "-sleep.pid" }) do
          local pid = assert(tonumber(T.read(bare .. "/" .. f)))
          assert.is_truthy(T.wait_for(function() return not T.alive(pid) end, 5), f)
        end
      end
      local hang = "echo $$ > %s.pid\nsleep 300 &\necho $! > %s-sleep.pid\necho 'waiting for approval'\nwait\n"
      hook(bare .. "/hooks", "pre-receive", hang:format("pre-receive", "pre-receive"))
      local out = push()
      assert.is_false(out.ok)
      assert.equal("EREJECTED", out.code)
      assert.equal("push " .. bare .. " refs/heads/main: rejected (pre-receive hook timed out after 1 s and was killed;"
        .. " remote: waiting for approval)", out.err)
      assert.is_true(out.seconds >= 1 and out.seconds < 10, tostring(out.seconds))
      assert.equal(old, sb.git(bare, "git rev-parse main"))
      gone("pre-receive")
      -- after the ref moved, a hook's outcome does not change the push's (as git)
      os.remove(bare .. "/hooks/pre-receive")
      hook(bare .. "/hooks", "post-receive", hang:format("post-receive", "post-receive"))
      out = push()
      assert.is_true(out.ok, out.err)
      assert.is_true(out.seconds >= 1 and out.seconds < 10, tostring(out.seconds))
      assert.equal(tip, sb.git(bare, "git rev-parse main"))
      gone("post-receive")
    end)
  end)

  describe("remotes over git daemon", function()
    local sb, srv, bare
    before_each(function()
      sb = sandbox()
      os.execute("mkdir -p " .. T.q(sb.root .. "/srv"))
      local src = sb.repo("src", { f = "1\n" })
      sb.git(sb.root, "git clone -q --bare src srv/ws.git")
      bare = sb.root .. "/srv/ws.git"
      srv = gitserve.daemon(sb.root .. "/srv")
      assert.is_string(src)
    end)
    after_each(function() srv.stop() end)

    it("clones, fetches with progress, and pushes with the expected old value", function()
      local events = {}
      local repo <close> = assert(git.clone(srv.url("ws.git"), sb.root .. "/c", {
        progress = function(p) events[#events + 1] = p end }))
      assert.is_true(#events > 0)
      assert.equal("receiving", events[1].phase)
      assert.is_number(events[#events].total_objects)
      assert.same({ { name = "origin", url = srv.url("ws.git") } }, repo:remotes())
      local old = repo:resolve("HEAD")
      T.write(sb.root .. "/c/f", "2\n")
      repo:add_all()
      local new = repo:commit({ message = "two", author = AUTHOR })
      local pushed = {}
      assert.is_true(repo:push("origin", { "refs/heads/main:refs/heads/main" },
        { expect = old, progress = function(p) pushed[#pushed + 1] = p.phase end }))
      assert.equal(new, sb.git(bare, "git rev-parse main"))
      -- the remote is no longer at `old`
      T.write(sb.root .. "/c/f", "3\n")
      repo:add_all()
      repo:commit({ message = "three", author = AUTHOR })
      local ok, err, code = repo:push("origin", { "refs/heads/main:refs/heads/main" }, { expect = old })
      assert.is_nil(ok)
      assert.equal("EMOVED", code)
      assert.matches("target moved", err)
      assert.equal(new, sb.git(bare, "git rev-parse main"))
      -- ls_remote sees the server's refs
      local heads = {}
      for _, h in ipairs(assert(repo:ls_remote("origin"))) do heads[h.name] = h.sha end
      assert.equal(new, heads["refs/heads/main"])
    end)

    it("reports a non-fast-forward push as rejected", function()
      local repo <close> = assert(git.clone(srv.url("ws.git"), sb.root .. "/c"))
      local other = sb.root .. "/other"
      sb.git(sb.root, "git clone -q " .. T.q(srv.url("ws.git")) .. " other")
      sb.commit(other, { f = "elsewhere\n" })
      sb.git(other, "git push -q origin main")
      T.write(sb.root .. "/c/f", "mine\n")
      repo:add_all()
      repo:commit({ message = "mine", author = AUTHOR })
      local ok, err, code = repo:push("origin", { "refs/heads/main:refs/heads/main" })
      assert.is_nil(ok)
      assert.equal("EREJECTED", code)
      assert.equal("push origin refs/heads/main: rejected (non-fast-forward)", err)
    end)

    it("turns a pre-receive rejection into an error with the server's reason", function()
      T.write(bare .. "/hooks/pre-receive", "#!/bin/sh\necho 'main is frozen' >&2\nexit 1\n")
      os.execute("chmod +x " .. T.q(bare .. "/hooks/pre-receive"))
      local repo <close> = assert(git.clone(srv.url("ws.git"), sb.root .. "/c"))
      T.write(sb.root .. "/c/f", "2\n")
      repo:add_all()
      repo:commit({ message = "two", author = AUTHOR })
      local ok, err, code = repo:push("origin", { "refs/heads/main:refs/heads/main" })
      assert.is_nil(ok)
      assert.equal("EREJECTED", code)
      assert.matches("^push origin refs/heads/main: rejected %(pre%-receive hook declined", err)
      assert.matches("main is frozen", err)
    end)

    -- The target (srv/ws.git, served) and a source work repository share a base commit and
    -- have history on both sides; a bare working copy `wc` fetched both and merged them,
    -- source winning. The files are long enough for deltas to pay off.
    local function diverged()
      local function lines(tag, n)
        local out = {}
        for i = 1, n do out[i] = string.format("select %d as id, '%s' as tag from models_%d", i, tag, i) end
        return table.concat(out, "\n") .. "\n"
      end
      local tw, sw = sb.root .. "/tw", sb.root .. "/sw"
      sb.git(sb.root, "git clone -q " .. T.q(bare) .. " tw")
      sb.commit(tw, { ["lib/a.sql"] = lines("base", 40), ["lib/b.sql"] = lines("base", 30),
        ["x.sql"] = lines("base", 20) }, "base")
      sb.git(tw, "git push -q origin main")
      sb.git(sb.root, "git clone -q " .. T.q(bare) .. " sw")
      sb.commit(sw, { ["lib/a.sql"] = lines("base", 40) .. "-- source one\n" }, "source one")
      sb.commit(sw, { ["lib/b.sql"] = lines("source", 30), ["y.sql"] = lines("y", 10) }, "source two")
      sb.commit(tw, { ["x.sql"] = lines("target", 20) }, "target one")
      sb.git(tw, "git push -q origin main")
      local wc = assert(git.init(sb.root .. "/wc", { bare = true }))
      assert(wc:fetch(srv.url("ws.git"), { "+refs/heads/main:refs/remotes/origin/main" }))
      assert(wc:fetch(sw, { "+refs/heads/main:refs/remotes/src/main" }))
      local r = assert(wc:merge("refs/remotes/origin/main", "refs/remotes/src/main",
        { favor = "theirs", allow_unrelated = true, message = "merge\n" }))
      assert(wc:update_ref("refs/moonops/promote/main", r.commit))
      return wc, r.commit, sw
    end
    local function objects(dir)
      local set = {}
      for id in sb.git(dir, "git cat-file --batch-all-objects --batch-check='%(objectname)'"):gmatch("%x+") do
        set[id] = true
      end
      return set
    end
    local function fsck(dir)
      return sb.git(dir, "git fsck --full --no-dangling 2>&1 | grep -v -e '^Checking' -e '^notice' || true")
    end

    it("pushes a merge as the objects git would send, with deltas the server resolves", function()
      local wc <close>, tip, sw = diverged()
      local old = wc:resolve("refs/remotes/origin/main")
      sb.git(sb.root, "cp -a srv/ws.git srv/ws2.git")
      sb.git(bare, "git config receive.unpackLimit 1") -- keep what arrives as a pack
      -- git's choice (the oracle): reachable from the tip, not from the server's refs
      local refs = sb.git(bare, "git for-each-ref --format='%(objectname)'"):gsub("\n", " ")
      local want = {}
      for id in sb.git(sb.root .. "/wc", "git rev-list --objects " .. tip .. " --not " .. refs
        .. " | cut -d' ' -f1"):gmatch("%x+") do
        want[id] = true
      end
      local had = objects(bare)
      local events = {}
      assert.is_true(wc:push(srv.url("ws.git"), { "refs/moonops/promote/main:refs/heads/main" },
        { expect = old, progress = function(e) events[#events + 1] = e end }))
      assert.equal(tip, sb.git(bare, "git rev-parse main"))
      assert.equal(old .. "\n" .. sb.git(sw, "git rev-parse main"), sb.git(bare, "git rev-parse main^@"))
      assert.equal("", fsck(bare))
      -- exactly those objects arrived, and the pack counted them as it went
      local arrived = {}
      for id in pairs(objects(bare)) do
        if not had[id] then arrived[id] = true end
      end
      assert.same(want, arrived)
      local last = events[#events]
      assert.equal("pushing", last.phase)
      local count = 0
      for _ in pairs(want) do count = count + 1 end
      assert.equal(count, last.total)
      assert.equal(count, last.current)
      -- the source's lib/a.sql went as a delta against the base's version
      local blob = sb.git(sw, "git rev-parse HEAD~1:lib/a.sql")
      local stored = sb.git(bare, "for p in objects/pack/*.idx; do git verify-pack -v $p; done | grep '^" .. blob .. " '")
      assert.matches("^%x+ blob +%d+ %d+ %d+ %d+ " .. sb.git(sw, "git rev-parse HEAD~2:lib/a.sql") .. "$", stored)
      -- pushing it again is up to date; libgit2's own pack builder gives the same result
      assert.is_true(wc:push(srv.url("ws.git"), { "refs/moonops/promote/main:refs/heads/main" }, { expect = tip }))
      assert.is_true(wc:push(srv.url("ws2.git"), { "refs/moonops/promote/main:refs/heads/main" },
        { expect = old, direct = false }))
      assert.equal(tip, sb.git(sb.root .. "/srv/ws2.git", "git rev-parse main"))
      assert.equal("", fsck(sb.root .. "/srv/ws2.git"))
    end)

    it("creates a branch in an empty repository, and names a missing one", function()
      sb.git(sb.root, "git init -q --bare srv/empty.git")
      local repo <close> = assert(git.clone(srv.url("ws.git"), sb.root .. "/c"))
      local head = repo:resolve("HEAD")
      assert.is_true(repo:push(srv.url("empty.git"), { "refs/heads/main:refs/heads/main" }, { expect = "" }))
      assert.equal(head, sb.git(sb.root .. "/srv/empty.git", "git rev-parse main"))
      assert.equal("", fsck(sb.root .. "/srv/empty.git"))
      local ok, err = repo:push(srv.url("nope.git"), { "refs/heads/main:refs/heads/main" })
      assert.is_nil(ok)
      assert.matches("^push git://127%.0%.0%.1:%d+/nope%.git refs/heads/main: .", err)
    end)

    it("aborts a fetch whose progress function raises, with that message", function()
      local repo <close> = assert(git.init(sb.root .. "/e"))
      local ok, err = repo:fetch(srv.url("ws.git"), { "+refs/heads/*:refs/remotes/x/*" },
        { progress = function() error("stop right there") end })
      assert.is_nil(ok)
      assert.matches("stop right there", err)
      assert.has_error(function() repo:fetch(srv.url("ws.git"), nil, { progress = 42 }) end)
    end)

    it("fetches by URL into the refs named, and fails clearly for a missing repository or server", function()
      local repo <close> = assert(git.init(sb.root .. "/e"))
      assert.is_true(repo:fetch(srv.url("ws.git"), { "+refs/heads/main:refs/remotes/src/main" }))
      assert.equal(sb.git(bare, "git rev-parse main"), repo:resolve("refs/remotes/src/main"))
      local ok, err = repo:fetch(srv.url("nope.git"), { "+refs/heads/main:refs/remotes/src/main" })
      assert.is_nil(ok)
      assert.matches("^fetch git://127%.0%.0%.1:%d+/nope%.git: ", err)
      local port = T.free_port()
      ok, err = repo:fetch(string.format("git://127.0.0.1:%d/ws.git", port), { "+refs/heads/main:refs/x" })
      assert.is_nil(ok)
      assert.matches("fetch git://127%.0%.0%.1:" .. port, err)
    end)
  end)

  describe("smart HTTP with Basic auth", function()
    local sb, web
    before_each(function()
      sb = sandbox()
      os.execute("mkdir -p " .. T.q(sb.root .. "/srv"))
      sb.repo("src", { f = "1\n" })
      sb.git(sb.root, "git clone -q --bare src srv/ws.git")
      web = gitserve.http(sb.root .. "/srv", { user = "bot", token = "s3cret-token-value" })
    end)
    after_each(function() web.stop() end)

    it("clones and pushes with a token", function()
      local creds = { username = "bot", token = "s3cret-token-value" }
      local repo <close> = assert(git.clone(web.url("ws.git"), sb.root .. "/c", { credentials = creds }))
      T.write(sb.root .. "/c/f", "2\n")
      repo:add_all()
      local sha = repo:commit({ message = "two", author = AUTHOR })
      assert.is_true(repo:push("origin", { "refs/heads/main:refs/heads/main" }, { credentials = creds }))
      assert.equal(sha, sb.git(sb.root .. "/srv/ws.git", "git rev-parse main"))
    end)

    it("pushes a merge with history, and gives up on a wrong token after bounded attempts", function()
      local creds = { username = "bot", token = "s3cret-token-value" }
      local repo <close> = assert(git.clone(web.url("ws.git"), sb.root .. "/c", { credentials = creds }))
      local old = repo:resolve("HEAD")
      for i = 1, 3 do
        T.write(sb.root .. "/c/f" .. i, string.rep("line " .. i .. "\n", 40))
        repo:add_all()
        repo:commit({ message = "commit " .. i, author = AUTHOR })
      end
      local tip = repo:resolve("HEAD")
      local ok, err, code = repo:push("origin", { "refs/heads/main:refs/heads/main" },
        { credentials = { username = "bot", token = "wrong-token-5678" } })
      assert.is_nil(ok)
      assert.equal("EAUTH", code)
      assert.matches("3 attempts", err)
      assert.is_nil(err:find("wrong-token-5678", 1, true))
      assert.equal(old, sb.git(sb.root .. "/srv/ws.git", "git rev-parse main"))
      assert.is_true(repo:push("origin", { "refs/heads/main:refs/heads/main" }, { credentials = creds, expect = old }))
      assert.equal(tip, sb.git(sb.root .. "/srv/ws.git", "git rev-parse main"))
      assert.equal("", sb.git(sb.root .. "/srv/ws.git",
        "git fsck --full --no-dangling 2>&1 | grep -v -e '^Checking' -e '^notice' || true"))
    end)

    it("gives up after a bounded number of attempts with a wrong token, never printing it", function()
      local ok, err, code = git.clone(web.url("ws.git"), sb.root .. "/c",
        { credentials = { username = "bot", token = "wrong-token-1234" } })
      assert.is_nil(ok)
      assert.equal("EAUTH", code)
      assert.matches("authentication failed", err)
      assert.matches("3 attempts", err)
      assert.is_nil(err:find("wrong-token-1234", 1, true))
    end)

    it("says credentials are needed when none are given, and strips userinfo from URLs", function()
      local r = T.moonops({ "lua", "-e", string.format([[
        local git = require "moonops.git"
        local _, err = git.clone(%q, %q)
        print(err)
        _, err = git.clone(%q, %q)
        print(err)]], web.url("ws.git"), sb.root .. "/c1",
        web.url("ws.git"):gsub("//", "//bot:leaked-secret-99@"), sb.root .. "/c2") },
        { env = { MOONOPS_GIT_TOKEN = false, HOME = sb.home } })
      assert.equal(0, r.code, r.stderr)
      assert.matches("authentication required", r.stdout)
      assert.is_nil(r.stdout:find("leaked-secret-99", 1, true))
      assert.is_nil(r.stdout:find("bot:", 1, true))
    end)

    it("takes the token from $MOONOPS_GIT_TOKEN", function()
      local r = T.moonops({ "lua", "-e", string.format([[
        local git = require "moonops.git"
        local repo = assert(git.clone(%q, %q, { credentials = { username = "bot" } }))
        print(repo:head().commit)]], web.url("ws.git"), sb.root .. "/c") },
        { env = { MOONOPS_GIT_TOKEN = "s3cret-token-value", HOME = sb.home } })
      assert.equal(0, r.code, r.stderr)
      assert.equal(sb.git(sb.root .. "/srv/ws.git", "git rev-parse main") .. "\n", r.stdout)
    end)
  end)

  describe("over ssh", function()
    -- one sshd for these cases (they serve repositories by absolute path, each its own)
    local srv, sb, bare, log_mark
    setup(function() srv = gitserve.ssh("/") end)
    teardown(function() srv.stop() end)
    before_each(function()
      sb = sandbox()
      os.execute("mkdir -p " .. T.q(sb.root .. "/srv"))
      sb.repo("src", { f = "1\n" })
      sb.git(sb.root, "git clone -q --bare src srv/ws.git")
      bare = sb.root .. "/srv/ws.git"
      srv.known_hosts(sb.home)
      log_mark = #(T.read(srv.log) or "")
    end)

    -- ~/.ssh/known_hosts and the default keys are read from $HOME and the agent found through
    -- $SSH_AUTH_SOCK, so each case runs in a moonops process of its own with its own
    -- environment (this process's HOME is the user's, not to be written to).
    -- `code` sees `git`, `json`, `url` (ws.git over ssh), `dir` (a path, emptied first), `key`
    -- (the server's client key) and `edit(repo, text)` (a commit changing f); what it
    -- returns is decoded from JSON. A passphrase travels in $TEST_SSH_PASSPHRASE.
    local function run(code, env)
      local script = sb.root .. "/case.lua"
      os.execute("rm -rf " .. T.q(sb.root .. "/c") .. " " .. T.q(sb.root .. "/c-fetch"))
      T.write(script, string.format([[
local git = require "moonops.git"
local json = require "moonops.json"
local url, dir, key = %q, %q, %q
local function edit(repo, text)
  local f = assert(io.open(repo:workdir() .. "f", "w"))
  f:write(text)
  f:close()
  repo:add_all()
  return repo:commit({ message = text, author = { name = "A", email = "a@example.com" } })
end
local function outcome(ok, err, code) return { ok = ok and true or false, err = err, code = code } end
local result = (function() %s end)()
print(json.encode(result))
]], srv.url(bare), sb.root .. "/c", srv.key, code))
      local e = { HOME = sb.home, SSH_AUTH_SOCK = false, MOONOPS_GIT_TOKEN = false, GIT_CONFIG_NOSYSTEM = "1",
        LSAN_OPTIONS = gitserve.SSH_LSAN_OPTIONS }
      for k, v in pairs(env or {}) do e[k] = v end
      local r = T.moonops({ "lua", script }, { env = e })
      assert.equal(0, r.code, r.stderr)
      return json.decode(r.stdout), r.stdout .. r.stderr
    end
    -- keys sshd refused since the case began
    local function failed_keys()
      local n = 0
      for _ in (T.read(srv.log) or ""):sub(log_mark + 1):gmatch("Failed publickey for") do n = n + 1 end
      return n
    end

    it("clones, fetches and pushes with a key file, with the expected old value", function()
      local out = run([[
        local creds = { ssh_key = key }
        local repo = assert(git.clone(url, dir, { credentials = creds }))
        local old = repo:resolve("HEAD")
        local new = edit(repo, "2\n")
        local pushed = outcome(repo:push("origin", { "refs/heads/main:refs/heads/main" },
          { expect = old, credentials = creds }))
        edit(repo, "3\n")
        local stale = outcome(repo:push("origin", { "refs/heads/main:refs/heads/main" },
          { expect = old, credentials = creds }))
        local other = assert(git.init(dir .. "-fetch", { bare = true }))
        local fetched = outcome(other:fetch(url, { "+refs/heads/main:refs/remotes/ssh/main" }, { credentials = creds }))
        return { old = old, new = new, pushed = pushed, stale = stale, fetched = fetched,
          tip = other:resolve("refs/remotes/ssh/main"), remote = repo:remotes()[1].url }]])
      assert.equal(sb.git(sb.root .. "/src", "git rev-parse HEAD"), out.old)
      assert.equal(srv.url(bare), out.remote)
      assert.is_true(out.pushed.ok, out.pushed.err)
      assert.is_false(out.stale.ok)
      assert.equal("EMOVED", out.stale.code)
      assert.matches("target moved", out.stale.err)
      assert.equal(out.new, sb.git(bare, "git rev-parse main"))
      assert.is_true(out.fetched.ok, out.fetched.err)
      assert.equal(out.new, out.tip)
      assert.equal("", sb.git(bare, "git fsck --full --no-dangling 2>&1 | grep -v -e '^Checking' -e '^notice' || true"))
      assert.equal(0, failed_keys())
    end)

    it("turns a pre-receive rejection into an error with the server's reason", function()
      T.write(bare .. "/hooks/pre-receive", "#!/bin/sh\necho 'main is frozen' >&2\nexit 1\n")
      os.execute("chmod +x " .. T.q(bare .. "/hooks/pre-receive"))
      local before = sb.git(bare, "git rev-parse main")
      local out = run([[
        local repo = assert(git.clone(url, dir, { credentials = { ssh_key = key } }))
        edit(repo, "2\n")
        return outcome(repo:push("origin", { "refs/heads/main:refs/heads/main" }, { credentials = { ssh_key = key } }))]])
      assert.is_false(out.ok)
      assert.equal("EREJECTED", out.code)
      assert.matches("^push origin refs/heads/main: rejected %(pre%-receive hook declined", out.err)
      assert.matches("main is frozen", out.err)
      assert.equal(before, sb.git(bare, "git rev-parse main"))
    end)

    it("gives up on a key the server refuses, naming it and never its passphrase", function()
      local wrong = gitserve.keygen(sb.root .. "/wrong_key", { passphrase = "correct horse battery" })
      local case = [[
        return outcome(git.clone(url, dir,
          { credentials = { ssh_key = %q, ssh_passphrase = os.getenv("TEST_SSH_PASSPHRASE") } }))]]
      local out, all = run(case:format(wrong), { TEST_SSH_PASSPHRASE = "correct horse battery" })
      assert.is_false(out.ok)
      assert.equal("EAUTH", out.code)
      assert.matches("ssh authentication as " .. srv.user .. " failed: ssh key " .. wrong:gsub("%p", "%%%0") .. " rejected$",
        out.err)
      assert.is_nil(all:find("correct horse battery", 1, true))
      assert.equal(1, failed_keys()) -- offered once, not retried
      assert.is_nil(T.read(sb.root .. "/c/f"))
      -- a key file that is not there is named as such
      out = run([[return outcome(git.clone(url, dir, { credentials = { ssh_key = dir .. ".missing" } }))]])
      assert.equal("EAUTH", out.code)
      assert.matches("ssh key .*/c%.missing: No such file or directory", out.err)
      -- an RSA key, even one the server lists, is refused: libssh2 1.10 signs with SHA-1 (ssh-rsa),
      -- which OpenSSH 8.8 and later do not accept; the message says so
      local rsa, rsa_pub = gitserve.keygen(sb.root .. "/rsa_key", { type = "rsa" })
      srv.authorize(rsa_pub)
      out = run(([[return outcome(git.clone(url, dir, { credentials = { ssh_key = %q } }))]]):format(rsa))
      assert.equal("EAUTH", out.code)
      assert.matches("ssh key " .. rsa:gsub("%p", "%%%0") .. " rejected %(an RSA key: libssh2 before 1%.11 signs with "
        .. "SHA%-1, which OpenSSH 8%.8 and later refuse; use an ed25519 or ECDSA key%)$", out.err)
    end)

    it("uses a passphrase-protected key with its passphrase, and says when the passphrase is wrong", function()
      local locked, pub = gitserve.keygen(sb.root .. "/locked_key", { passphrase = "s3cret passphrase 42" })
      srv.authorize(pub)
      local case = [[
        local repo, err, code = git.clone(url, dir,
          { credentials = { ssh_key = %q, ssh_passphrase = os.getenv("TEST_SSH_PASSPHRASE") } })
        return { ok = repo ~= nil, err = err, code = code, head = repo and repo:resolve("HEAD") }]]
      local out, all = run(case:format(locked), { TEST_SSH_PASSPHRASE = "s3cret passphrase 42" })
      assert.is_true(out.ok, out.err)
      assert.equal(sb.git(bare, "git rev-parse main"), out.head)
      assert.is_nil(all:find("s3cret passphrase 42", 1, true))
      out, all = run(case:format(locked), { TEST_SSH_PASSPHRASE = "not-the-passphrase-7" })
      assert.is_false(out.ok)
      assert.equal("EAUTH", out.code)
      assert.matches("ssh key " .. locked:gsub("%p", "%%%0") .. " could not be used %(.*[Ww]rong passphrase", out.err)
      assert.is_nil(all:find("not-the-passphrase-7", 1, true))
      assert.is_nil(all:find("s3cret passphrase 42", 1, true))
    end)

    it("takes the key from the ssh agent when no key file is given", function()
      local sock = sb.root .. "/agent.sock"
      local wrong = gitserve.keygen(sb.root .. "/wrong_key")
      local agent = T.spawn("exec ssh-agent -D -a " .. T.q(sock), sb.root .. "/agent.log")
      local ok, err = pcall(function()
        assert(T.wait_for(function() return T.sh("test -S " .. T.q(sock) .. " && echo yes"):match("yes") end, 5),
          "ssh-agent did not start: " .. tostring(T.read(sb.root .. "/agent.log")))
        local function add(k)
          local o, added = T.sh(string.format("SSH_AUTH_SOCK=%s ssh-add -q %s 2>&1", T.q(sock), T.q(k)))
          assert(added, o)
        end
        local case = [[
          local repo, err, code = git.clone(url, dir)
          return { ok = repo ~= nil, err = err, code = code, head = repo and repo:resolve("HEAD") }]]
        add(wrong)
        local out = run(case, { SSH_AUTH_SOCK = sock })
        assert.is_false(out.ok)
        assert.equal("EAUTH", out.code)
        assert.matches("ssh authentication as " .. srv.user .. " failed: the ssh agent offered no accepted key", out.err)
        add(srv.key)
        out = run(case, { SSH_AUTH_SOCK = sock })
        assert.is_true(out.ok, out.err)
        assert.equal(sb.git(bare, "git rev-parse main"), out.head)
      end)
      T.kill(agent)
      assert(ok, err)
    end)

    it("falls back to the default keys under $HOME/.ssh, one after the other, as ssh does", function()
      local case = [[
        local repo, err, code = git.clone(url, dir)
        return { ok = repo ~= nil, err = err, code = code }]]
      local out = run(case)
      assert.is_false(out.ok)
      assert.equal("EAUTH", out.code)
      assert.matches("no ssh key: set ssh_key_file or start ssh%-agent", out.err)
      local ssh_dir = sb.home .. "/.ssh"
      gitserve.keygen(ssh_dir .. "/id_ed25519") -- not authorized
      local _, ecdsa_pub = gitserve.keygen(ssh_dir .. "/id_ecdsa", { type = "ecdsa" })
      srv.authorize(ecdsa_pub)
      out = run(case)
      assert.is_true(out.ok, out.err)
      assert.equal(1, failed_keys()) -- id_ed25519 first, refused; then id_ecdsa
      os.remove(ssh_dir .. "/id_ecdsa")
      out = run(case)
      assert.is_false(out.ok)
      assert.equal("EAUTH", out.code)
      assert.matches("failed: ssh key " .. ssh_dir:gsub("%p", "%%%0") .. "/id_ed25519 rejected$", out.err)
    end)

    it("refuses a host whose key is unknown or has changed, fetching nothing", function()
      local port = srv.port
      local case = [[return outcome(git.clone(url, dir, { credentials = { ssh_key = key } }))]]
      for _, known in ipairs({ "", string.format("[127.0.0.1]:%d %s\n", port, T.read(srv.pubkey):match("^%S+ %S+")) }) do
        T.write(sb.home .. "/.ssh/known_hosts", known)
        local out = run(case)
        assert.is_false(out.ok)
        assert.equal("ECERT", out.code)
        assert.equal(string.format("clone %s: ssh host key of [127.0.0.1]:%d is unknown or has changed (checked against "
          .. "%s/.ssh/known_hosts): verify the host's key, then add it to that file (ssh-keyscan -p %d 127.0.0.1 prints "
          .. "it)", srv.url(bare):gsub("//[^@]*@", "//"), port, sb.home, port), out.err)
        assert.is_nil(T.read(sb.root .. "/c/f"))
      end
      assert.is_nil((T.read(srv.log) or ""):sub(log_mark + 1):find("Accepted publickey", 1, true))
    end)
  end)
end)
