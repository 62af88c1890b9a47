local fs = require "moonops.fs"
local T = require "support.t"

describe("moonops.fs", function()
  local d

  before_each(function() d = T.tmpdir() end)
  after_each(function() T.cleanup() end)

  describe("read and write", function()
    it("round-trips binary data", function()
      local data = "a\0b\255\n" .. ("x"):rep(100000)
      assert.is_true(fs.write(d .. "/f", data))
      assert.equal(data, fs.read(d .. "/f"))
      assert.equal(data, T.read(d .. "/f"))
      assert.is_true(fs.write(d .. "/f", "short"))
      assert.equal("short", fs.read(d .. "/f"))
      assert.equal("", (fs.read("/dev/null")))
    end)

    it("appends", function()
      assert.is_true(fs.append(d .. "/log", "one\n"))
      assert.is_true(fs.append(d .. "/log", "two\n"))
      assert.equal("one\ntwo\n", fs.read(d .. "/log"))
    end)

    it("returns nil, message, code for a missing file", function()
      local v, err, code = fs.read(d .. "/missing")
      assert.is_nil(v)
      assert.equal("read " .. d .. "/missing: No such file or directory", err)
      assert.equal("ENOENT", code)
      v, err, code = fs.read(d)
      assert.is_nil(v)
      assert.matches("^read ", err)
      assert.equal("EISDIR", code)
      v, err, code = fs.write(d .. "/no/such/dir/f", "x")
      assert.is_nil(v)
      assert.matches("^write ", err)
      assert.equal("ENOENT", code)
    end)

    it("raises on wrong argument types", function()
      assert.has_error(function() fs.read() end)
      assert.has_error(function() fs.read({}) end)
      assert.has_error(function() fs.write(d .. "/f") end)
      assert.has_error(function() fs.write(d .. "/f", "x", "rw") end)
      assert.has_error(function() fs.write(d .. "/f", "x", 8 ^ 5) end)
    end)
  end)

  describe("write_atomic", function()
    it("replaces a file and leaves no temporary behind", function()
      assert.is_true(fs.write_atomic(d .. "/cfg", "old"))
      assert.is_true(fs.write_atomic(d .. "/cfg", "new"))
      assert.equal("new", fs.read(d .. "/cfg"))
      assert.same({ "cfg" }, fs.list(d))
    end)

    it("keeps the inode of readers' open copy intact (a new file, not an overwrite)", function()
      assert.is_true(fs.write_atomic(d .. "/cfg", "old"))
      local f = assert(io.open(d .. "/cfg", "rb"))
      assert.is_true(fs.write_atomic(d .. "/cfg", "new"))
      assert.equal("old", f:read("a"))
      f:close()
    end)

    it("uses 0644 by default and the mode asked for", function()
      local old = fs.umask(tonumber("077", 8))
      assert.is_true(fs.write_atomic(d .. "/pub", "x"))
      assert.is_true(fs.write_atomic(d .. "/secret", "x", tonumber("600", 8)))
      fs.umask(old)
      assert.equal(tonumber("644", 8), fs.stat(d .. "/pub").mode)
      assert.equal(tonumber("600", 8), fs.stat(d .. "/secret").mode)
    end)

    it("fails without leaving a temporary when the directory is missing", function()
      local ok, err, code = fs.write_atomic(d .. "/nope/cfg", "x")
      assert.is_nil(ok)
      assert.matches("^write .*/nope/cfg: ", err)
      assert.equal("ENOENT", code)
    end)

    it("fails cleanly when the target is a directory", function()
      assert.is_true(fs.mkdirs(d .. "/sub/inner"))
      local ok, err = fs.write_atomic(d .. "/sub", "x")
      assert.is_nil(ok)
      assert.matches("^write ", err)
      assert.same({ "sub" }, fs.list(d))
    end)
  end)

  describe("directories", function()
    it("mkdirs creates parents and is idempotent", function()
      assert.is_true(fs.mkdirs(d .. "/a/b/c"))
      assert.is_true(fs.mkdirs(d .. "/a/b/c"))
      assert.is_true(fs.mkdirs(d .. "/a/b/c/"))
      assert.equal("dir", fs.stat(d .. "/a/b/c").type)
      assert.is_true(fs.mkdirs(d .. "/m", tonumber("700", 8)))
      assert.equal(tonumber("700", 8), fs.stat(d .. "/m").mode)
    end)

    it("mkdirs refuses a path through a file", function()
      assert.is_true(fs.write(d .. "/file", ""))
      local ok, err, code = fs.mkdirs(d .. "/file")
      assert.is_nil(ok)
      assert.equal("ENOTDIR", code)
      assert.matches("^mkdirs ", err)
      ok, err, code = fs.mkdirs(d .. "/file/sub")
      assert.is_nil(ok)
      assert.matches("^mkdirs ", err)
      assert.equal("ENOTDIR", code)
      assert.has_error(function() fs.mkdirs("") end)
    end)

    it("mkdtemp makes a fresh private directory", function()
      local a = assert(fs.mkdtemp(d .. "/run-"))
      local b = assert(fs.mkdtemp(d .. "/run-"))
      assert.not_equal(a, b)
      assert.matches("^" .. d:gsub("%p", "%%%0") .. "/run%-%w%w%w%w%w%w$", a)
      assert.equal(tonumber("700", 8), fs.stat(a).mode)
      local v, _, code = fs.mkdtemp(d .. "/missing/x-")
      assert.is_nil(v)
      assert.equal("ENOENT", code)
    end)

    it("list gives sorted names without . and ..", function()
      for _, n in ipairs { "b", "a", ".hidden", "C" } do fs.write(d .. "/" .. n, "") end
      local names = fs.list(d)
      assert.same({ ".hidden", "C", "a", "b" }, names)
      assert.equal(require("moonops.engine").array_mt, getmetatable(names))
      assert.same({}, fs.list(fs.mkdtemp(d .. "/empty-")))
      local v, err, code = fs.list(d .. "/missing")
      assert.is_nil(v)
      assert.matches("^list ", err)
      assert.equal("ENOENT", code)
    end)

    it("remove_tree removes a tree, a file, and nothing at all", function()
      assert.is_true(fs.mkdirs(d .. "/t/a/b"))
      fs.write(d .. "/t/a/b/f", "x")
      fs.write(d .. "/t/g", "x")
      assert.is_true(fs.remove_tree(d .. "/t"))
      assert.is_false(fs.exists(d .. "/t"))
      fs.write(d .. "/plain", "x")
      assert.is_true(fs.remove_tree(d .. "/plain"))
      assert.is_false(fs.exists(d .. "/plain"))
      assert.is_true(fs.remove_tree(d .. "/never-existed"))
      assert.has_error(function() fs.remove_tree("/") end)
    end)

    it("remove_tree unlinks symlinks without following them", function()
      assert.is_true(fs.mkdirs(d .. "/outside/deep"))
      fs.write(d .. "/outside/deep/keep", "precious")
      assert.is_true(fs.mkdirs(d .. "/t/sub"))
      assert.is_true(fs.symlink(d .. "/outside", d .. "/t/sub/to-outside"))
      assert.is_true(fs.symlink("../../outside/deep/keep", d .. "/t/sub/to-file"))
      assert.is_true(fs.symlink(d .. "/nowhere", d .. "/t/dangling"))
      assert.is_true(fs.remove_tree(d .. "/t"))
      assert.is_false(fs.exists(d .. "/t"))
      assert.equal("precious", fs.read(d .. "/outside/deep/keep"))
    end)

    it("remove_tree reports what it could not remove", function()
      fs.write(d .. "/file", "x")
      local ok, err, code = fs.remove_tree(d .. "/file/sub")
      assert.is_nil(ok)
      assert.matches("^remove_tree .*/file/sub: Not a directory$", err)
      assert.equal("ENOTDIR", code)
    end)
  end)

  describe("stat, exists, glob", function()
    it("describes files, directories and links", function()
      fs.write(d .. "/f", "12345")
      assert.is_true(fs.symlink("f", d .. "/l"))
      local st = fs.stat(d .. "/f")
      assert.equal("file", st.type)
      assert.equal(5, st.size)
      assert.is_number(st.mtime)
      assert.is_true(math.abs(st.mtime - os.time()) < 3600)
      assert.equal("dir", fs.stat(d).type)
      assert.equal("file", fs.stat(d .. "/l").type)
      assert.equal("link", fs.stat(d .. "/l", { follow = false }).type)
      assert.equal("other", fs.stat("/dev/null").type)
    end)

    it("returns nil, err, ENOENT for a missing path and raises on misuse", function()
      local v, err, code = fs.stat(d .. "/nope")
      assert.is_nil(v)
      assert.matches("^stat .*/nope: No such file or directory$", err)
      assert.equal("ENOENT", code)
      assert.has_error(function() fs.stat(nil) end)
      assert.has_error(function() fs.stat(d, "follow") end)
    end)

    it("exists follows symlinks", function()
      fs.write(d .. "/f", "")
      fs.symlink("f", d .. "/good")
      fs.symlink("missing", d .. "/bad")
      assert.is_true(fs.exists(d .. "/f"))
      assert.is_true(fs.exists(d .. "/good"))
      assert.is_false(fs.exists(d .. "/bad"))
      assert.is_false(fs.exists(d .. "/none"))
    end)

    it("glob returns sorted matches, or an empty list", function()
      for _, n in ipairs { "b.yml", "a.yml", "c.txt", ".h.yml" } do fs.write(d .. "/" .. n, "") end
      fs.mkdirs(d .. "/sub")
      fs.write(d .. "/sub/x.yml", "")
      assert.same({ d .. "/a.yml", d .. "/b.yml" }, fs.glob(d .. "/*.yml"))
      assert.same({ d .. "/sub/x.yml" }, fs.glob(d .. "/*/*.yml"))
      assert.same({}, fs.glob(d .. "/*.json"))
      assert.same({}, fs.glob(d .. "/missing/*"))
      assert.has_error(function() fs.glob() end)
    end)
  end)

  describe("glob with recursive=true, checked against Python's pathlib", function()
    -- The oracle: pathlib.Path(root).glob(pattern) for each pattern, paths relative to
    -- root ("." for root itself), sorted. Two rules changed in Python 3.13; the oracle
    -- asks every version the same question: `**` inside a name is `*` (older versions
    -- reject it) and a final `**` matches directories only (3.13 adds files, which is
    -- what a final `**/` does not).
    local ORACLE = [[
import json, pathlib, re, sys
root = pathlib.Path(sys.argv[1])
out = {}
for pattern in sys.argv[2:]:
    asked = "/".join(p if p == "**" else re.sub(r"\*\*+", "*", p) for p in pattern.split("/"))
    if asked.endswith("**"):
        asked += "/"
    found = set()
    for p in root.glob(asked):
        rel = str(p.relative_to(root))
        found.add(rel)
    out[pattern] = sorted(found)
print(json.dumps(out))
]]
    local json = require "moonops.json"

    local function pathlib(root, patterns, wrap)
      local argv = {}
      for _, a in ipairs(wrap or {}) do argv[#argv + 1] = a end
      for _, a in ipairs { "python3", "-c", ORACLE, root } do argv[#argv + 1] = a end
      for _, p in ipairs(patterns) do argv[#argv + 1] = p end
      local r = T.run(argv)
      assert.equal(0, r.code, r.stderr)
      return json.decode(r.stdout)
    end

    -- fs.glob's matches relative to root, sorted.
    local function ours(root, pattern)
      local found = assert(fs.glob(pattern, { recursive = true, root = root }))
      local out = {}
      for i, p in ipairs(found) do
        if p == root then
          out[i] = "."
        else
          assert.equal(root .. "/", p:sub(1, #root + 1))
          out[i] = p:sub(#root + 2)
        end
      end
      table.sort(out)
      return out
    end

    local function tree(root)
      for _, f in ipairs {
        "top.yml", ".top.yml", "notes.txt", "a[b.yml", "a/1.yml", "a/b/2.yml", "a/b/c/3.yml",
        "a/b/c/.hidden.yml", ".hid/x/h.yml", "conf/x.meltano.yml", "conf/sub/z.meltano.yml",
        "conf/sub/deep/y.meltano.yml", "conf/sub/deep/notes.txt",
      } do
        T.write(root .. "/" .. f, "")
      end
      fs.mkdirs(root .. "/empty")
      assert(fs.symlink("../a", root .. "/conf/link"))
      assert(fs.symlink("missing.yml", root .. "/conf/dangling.meltano.yml"))
    end

    local PATTERNS = {
      -- `**` at the start, in the middle, at the end, twice
      "**/*.yml", "**", "**/", "a/**", "a/**/*.yml", "conf/**/*.meltano.yml", "**/b/**/*.yml",
      "**/**/*.yml", "**/c", "**/.hid",
      -- hidden files and directories: `*` matches a leading dot
      "*.yml", "*", ".*", "*/", ".hid/*/*.yml", "*/*/*/.*",
      -- `**` inside a name acts like `*`
      "conf/**.meltano.yml", "a**", "**.yml",
      -- character classes, `?`, an unclosed bracket
      "[ac]*", "[!a.]*", "[a-c]/?.yml", "?op.yml", "a[b.yml",
      -- no magic: an existing file, a missing one, a directory, a trailing slash, a dangling link
      "top.yml", "missing.yml", "missing/*.yml", "a/b", "a/b/", "top.yml/", "conf/dangling.meltano.yml",
      -- empty and `.` components; a symlinked directory named (followed) and reached by `**` (not)
      "./a//b/./*.yml", "conf/link/*", "conf/link/**", "conf/**/1.yml", "conf/*/", "conf/*.meltano.yml",
    }

    it("matches what pathlib matches, pattern by pattern", function()
      tree(d)
      local want = pathlib(d, PATTERNS)
      for _, pattern in ipairs(PATTERNS) do
        assert.same(want[pattern], ours(d, pattern), "pattern " .. pattern)
      end
      -- spot checks, so the oracle itself cannot drift unnoticed
      assert.same({ "conf/dangling.meltano.yml", "conf/sub/deep/y.meltano.yml", "conf/sub/z.meltano.yml",
        "conf/x.meltano.yml" }, ours(d, "conf/**/*.meltano.yml"))
      assert.same({}, ours(d, "conf/dangling.meltano.yml"))
      assert.same({ ".", ".hid", ".hid/x", "a", "a/b", "a/b/c", "conf", "conf/sub", "conf/sub/deep", "empty" },
        ours(d, "**"))
      assert.same({ ".hid/x/h.yml", ".top.yml", "a/1.yml", "a/b/2.yml", "a/b/c/.hidden.yml", "a/b/c/3.yml",
        "a[b.yml", "conf/dangling.meltano.yml", "conf/sub/deep/y.meltano.yml", "conf/sub/z.meltano.yml",
        "conf/x.meltano.yml", "top.yml" }, ours(d, "**/*.yml"))
      assert.same({}, ours(d, "conf/**/1.yml"))
      assert.same({ "conf/link/1.yml", "conf/link/b" }, ours(d, "conf/link/*"))
    end)

    it("returns paths as written: relative to the working directory, absolute, or under root", function()
      tree(d)
      local r = T.run({ T.bin, "lua", "-e", [[
local fs = require "moonops.fs"
print(table.concat(assert(fs.glob("a/**/*.yml", { recursive = true })), " "))
print(table.concat(assert(fs.glob("./a/*.yml", { recursive = true })), " "))
print(table.concat(assert(fs.glob("**", { recursive = true })), " "))
]] }, { cwd = d })
      assert.equal(0, r.code, r.stderr)
      assert.equal("a/1.yml a/b/2.yml a/b/c/.hidden.yml a/b/c/3.yml\na/1.yml\n"
        .. ". .hid .hid/x a a/b a/b/c conf conf/sub conf/sub/deep empty\n", r.stdout)
      assert.same({ d .. "/a/1.yml", d .. "/a/b/2.yml", d .. "/a/b/c/.hidden.yml", d .. "/a/b/c/3.yml" },
        fs.glob(d .. "/a/**/*.yml", { recursive = true }))
      assert.same({ d .. "/a", d .. "/a/b", d .. "/a/b/c" }, fs.glob("a/**", { recursive = true, root = d .. "//" }))
      assert.same({ d }, fs.glob(".", { recursive = true, root = d }))
      assert.same({}, fs.glob("*", { recursive = true, root = d .. "/top.yml" }))
      assert.same({}, fs.glob("*", { recursive = true, root = d .. "/missing" }))
      -- glob(3) without the option, as before: `**` is `*`, no hidden names
      assert.same({ d .. "/a/1.yml" }, fs.glob(d .. "/a/**.yml"))
      assert.same({ d .. "/a[b.yml", d .. "/top.yml" }, fs.glob(d .. "/*.yml"))
    end)

    it("refuses a walk past max_dirs directories", function()
      for i = 1, 5 do fs.mkdirs(d .. "/d" .. i .. "/x") end
      -- the starting directory plus 5 plus 5 below them
      assert.equal(11, #assert(fs.glob("**", { recursive = true, root = d, max_dirs = 11 })))
      local v, err = fs.glob("**/*.yml", { recursive = true, root = d, max_dirs = 10 })
      assert.is_nil(v)
      assert.equal("glob **/*.yml: more than 10 directories to search; narrow the pattern", err)
      -- named components are looked up, not listed, so they do not count
      assert.same({ d .. "/d1/x" }, fs.glob("d1/x", { recursive = true, root = d, max_dirs = 1 }))
    end)

    it("fails on an unreadable directory, naming it, where pathlib skips it", function()
      tree(d)
      T.write(d .. "/locked/in/secret.yml", "")
      assert(fs.chmod(d, 493)) -- 0755: the unprivileged user below may enter the tree
      assert(fs.chmod(d .. "/locked", 448)) -- 0700: but not this directory
      T.write(d .. "/probe.lua", [[
local fs = require "moonops.fs"
local root = ...
for _, pattern in ipairs { "**/*.yml", "locked/*", "locked/in/secret.yml", "a/**/*.yml" } do
  local v, err, code = fs.glob(pattern, { recursive = true, root = root })
  print(v and ("ok " .. #v) or (err .. " " .. tostring(code)))
end
]])
      -- as root, run both sides as nobody so the permission bits apply
      local wrap = {}
      if T.sh("id -u") == "0\n" then
        wrap = { "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env",
          "PATH=/usr/local/bin:/usr/bin:/bin" }
      end
      local argv = {}
      for _, a in ipairs(wrap) do argv[#argv + 1] = a end
      for _, a in ipairs { T.bin, "lua", d .. "/probe.lua", d } do argv[#argv + 1] = a end
      local r = T.run(argv)
      assert.equal(0, r.code, r.stderr)
      assert.equal(table.concat({
        "glob **/*.yml: list " .. d .. "/locked: Permission denied EACCES",
        "glob locked/*: list " .. d .. "/locked: Permission denied EACCES",
        "glob locked/in/secret.yml: stat " .. d .. "/locked/in: Permission denied EACCES",
        "ok 4",
        "",
      }, "\n"), r.stdout)
      -- pathlib, as the same user, leaves the directory out without a word
      local want = pathlib(d, { "**/*.yml", "locked/*", "a/**/*.yml" }, wrap)
      assert.same({}, want["locked/*"])
      assert.equal(12, #want["**/*.yml"])
      assert.same(ours(d, "a/**/*.yml"), want["a/**/*.yml"])
      -- as root (or the owner) nothing is denied: the same walk succeeds
      if wrap[1] then assert.equal(13, #assert(fs.glob("**/*.yml", { recursive = true, root = d }))) end
    end)

    it("raises on misuse", function()
      assert.has_error(function() fs.glob("", { recursive = true }) end)
      assert.has_error(function() fs.glob("/abs/*", { recursive = true, root = "/tmp" }) end)
      assert.has_error(function() fs.glob("*", { root = "/tmp" }) end)
      assert.has_error(function() fs.glob("*", { recursive = true, max_dirs = 0 }) end)
      assert.has_error(function() fs.glob("*", "recursive") end)
    end)
  end)

  describe("symlinks and renames", function()
    it("symlink_swap points a link at a new target atomically", function()
      fs.mkdirs(d .. "/releases/1")
      fs.mkdirs(d .. "/releases/2")
      assert.is_true(fs.symlink_swap("releases/1", d .. "/current"))
      assert.equal("releases/1", fs.readlink(d .. "/current"))
      assert.is_true(fs.symlink_swap("releases/2", d .. "/current"))
      assert.equal("releases/2", fs.readlink(d .. "/current"))
      assert.equal(fs.realpath(d .. "/releases/2"), fs.realpath(d .. "/current"))
      assert.same({ "current", "releases" }, fs.list(d))
    end)

    it("symlink_swap will not replace a directory and cleans up", function()
      fs.mkdirs(d .. "/current/x")
      local ok, err = fs.symlink_swap("elsewhere", d .. "/current")
      assert.is_nil(ok)
      assert.matches("^symlink_swap ", err)
      assert.same({ "current" }, fs.list(d))
    end)

    it("readlink, realpath, rename and remove report failures", function()
      fs.write(d .. "/f", "x")
      local v, _, code = fs.readlink(d .. "/f")
      assert.is_nil(v)
      assert.equal("EINVAL", code)
      v, _, code = fs.realpath(d .. "/missing")
      assert.is_nil(v)
      assert.equal("ENOENT", code)
      assert.is_true(fs.rename(d .. "/f", d .. "/g"))
      assert.equal("x", fs.read(d .. "/g"))
      local err
      v, err, code = fs.rename(d .. "/f", d .. "/h")
      assert.is_nil(v)
      assert.matches("^rename .*/f to .*/h: ", err)
      assert.equal("ENOENT", code)
      assert.is_true(fs.remove(d .. "/g"))
      v, _, code = fs.remove(d .. "/g")
      assert.is_nil(v)
      assert.equal("ENOENT", code)
    end)

    it("readlink reads long targets", function()
      local target = ("x"):rep(1000)
      assert.is_true(fs.symlink(target, d .. "/long"))
      assert.equal(target, fs.readlink(d .. "/long"))
    end)
  end)

  describe("lock", function()
    it("is exclusive, even within one process", function()
      local a = assert(fs.lock(d .. "/lk"))
      local b, err = fs.lock(d .. "/lk", { wait = false })
      assert.is_nil(b)
      assert.equal("locked", err)
      b, err = fs.lock(d .. "/lk", { timeout = 0.1 })
      assert.is_nil(b)
      assert.equal("locked", err)
      assert.is_number(a:fd())
      a:close()
      b = assert(fs.lock(d .. "/lk", { wait = false }))
      b:close()
      assert.equal(tonumber("600", 8), fs.stat(d .. "/lk").mode)
    end)

    it("is released by <close>, and a closed lock raises", function()
      local held
      do
        local l <close> = assert(fs.lock(d .. "/lk"))
        held = l
        assert.is_nil((fs.lock(d .. "/lk", { wait = false })))
      end
      assert.has_error(function() held:fd() end, "use of a closed lock")
      held:close()
      local again = assert(fs.lock(d .. "/lk", { wait = false }))
      again:close()
    end)

    it("is held against another process", function()
      local l = assert(fs.lock(d .. "/lk"))
      local script = "local l, err = require('moonops.fs').lock(arg[1], {wait = false}) "
        .. "io.write(l and 'got' or err)"
      local r = T.moonops({ "lua", "-e", script, d .. "/lk" })
      l:close()
      local r2 = T.moonops({ "lua", "-e", script, d .. "/lk" })
      assert.equal("locked", r.stdout)
      assert.equal("got", r2.stdout)
    end)

    it("reports a path it cannot create", function()
      local l, err, code = fs.lock(d .. "/missing/lk")
      assert.is_nil(l)
      assert.matches("^lock ", err)
      assert.equal("ENOENT", code)
      assert.has_error(function() fs.lock(d .. "/lk", "nowait") end)
    end)
  end)

  describe("process-wide settings", function()
    it("isatty is false for a file descriptor that is not a terminal", function()
      assert.is_false(fs.isatty(99))
      assert.is_false(fs.isatty(-1))
      assert.has_error(function() fs.isatty("stdout") end)
    end)

    it("umask sets and returns the previous mask", function()
      local old = fs.umask(tonumber("027", 8))
      assert.equal(tonumber("027", 8), fs.umask(old))
      assert.equal(old, fs.umask())
      assert.has_error(function() fs.umask(-1) end)
    end)
  end)
end)
