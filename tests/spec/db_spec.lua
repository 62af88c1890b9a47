local T = require "support.t"
local db = require "moonops.db"
local fs = require "moonops.fs"
local store = require "moonops.store"

local function tables(h)
  local names = {}
  for _, r in ipairs(h:rows("SELECT name FROM sqlite_master WHERE type = 'table' "
    .. "AND name NOT LIKE 'sqlite_%' ORDER BY name")) do
    names[#names + 1] = r.name
  end
  return names
end

local function columns(h, tbl)
  local names = {}
  for _, r in ipairs(h:rows("SELECT name FROM pragma_table_info(?) ORDER BY cid", tbl)) do
    names[#names + 1] = r.name
  end
  return names
end

local function mode_of(path)
  return (T.sh("stat -c %a " .. T.q(path)):gsub("%s+$", ""))
end

describe("moonops.db", function()
  local dir, umask_before

  before_each(function()
    dir = T.tmpdir()
    umask_before = fs.umask()
  end)

  after_each(function()
    fs.umask(umask_before)
    T.cleanup()
  end)

  describe("open", function()
    it("creates a private data_dir and a database at the current schema", function()
      local data_dir = dir .. "/state/nested"
      local h <close> = assert(db.open(data_dir))
      assert.equal("700", mode_of(data_dir))
      assert.equal("600", mode_of(data_dir .. "/moonops.db"))
      assert.equal(data_dir .. "/moonops.db", h:path())
      assert.equal(1, db.SCHEMA_VERSION)
      assert.equal(db.SCHEMA_VERSION, db.version(h))
      assert.same({ "deliveries", "deployments", "image_builds", "promotions", "schedule_runs",
        "workspaces" }, tables(h))
      assert.equal("wal", h:one("PRAGMA journal_mode").journal_mode)
      assert.equal(1, h:one("PRAGMA foreign_keys").foreign_keys)
    end)

    it("gives every table the documented columns", function()
      local h <close> = assert(db.open(dir))
      assert.same({ "id", "name", "active_environment", "current_release", "current_commit",
        "current_deployment", "updated_at" }, columns(h, "workspaces"))
      assert.same({ "id", "workspace_id", "workspace", "status", "trigger", "delivery", "ref", "after",
        "commit_sha", "release", "rollback_of", "pid", "created_at", "started_at", "finished_at",
        "error", "log" }, columns(h, "deployments"))
      assert.same({ "workspace_id", "provider", "delivery", "event", "deployment_id", "received_at" },
        columns(h, "deliveries"))
      assert.same({ "id", "schedule", "status", "pid", "started_at", "finished_at", "exit_code",
        "log_path" }, columns(h, "schedule_runs"))
      assert.same({ "id", "workspace", "commit_sha", "image", "tags", "digest", "builder", "status",
        "started_at", "finished_at", "error", "log" }, columns(h, "image_builds"))
      assert.same({ "id", "source", "target", "branch", "status", "old_commit", "commit_sha",
        "backup_ref", "created_at", "result" }, columns(h, "promotions"))
      local idx = {}
      for _, r in ipairs(h:rows("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
        "deployments")) do
        idx[r.name] = true
      end
      assert.is_true(idx.deployments_workspace_status)
      assert.is_true(idx.deployments_workspace_id)
    end)

    it("is idempotent: reopening keeps the data and the version", function()
      local h = assert(db.open(dir))
      h:exec("INSERT INTO workspaces (id, name, updated_at) VALUES (?, ?, ?)", "w1", "dev", db.now())
      h:close()
      local again <close> = assert(db.open(dir))
      assert.equal(1, db.version(again))
      assert.equal("dev", again:one("SELECT name FROM workspaces WHERE id = ?", "w1").name)
    end)

    it("migrates a version 0 database (an empty SQLite file)", function()
      local raw = assert(store.open(dir .. "/moonops.db"))
      raw:exec("CREATE TABLE user_notes (note TEXT); INSERT INTO user_notes VALUES ('kept')")
      assert.equal(0, db.version(raw))
      raw:close()
      local h <close> = assert(db.open(dir))
      assert.equal(db.SCHEMA_VERSION, db.version(h))
      assert.equal("kept", h:one("SELECT note FROM user_notes").note)
      assert.equal(0, h:one("SELECT count(*) AS n FROM deployments").n)
    end)

    it("refuses a database written by a newer moonops", function()
      local raw = assert(store.open(dir .. "/moonops.db"))
      raw:exec("PRAGMA user_version = 7")
      raw:close()
      local h, err = db.open(dir)
      assert.is_nil(h)
      assert.equal(dir .. "/moonops.db was written by a newer moonops (schema 7, this one knows 1): "
        .. "upgrade moonops or use another data_dir", err)
    end)

    it("reports a data_dir that cannot be created", function()
      T.write(dir .. "/file", "x")
      local h, err = db.open(dir .. "/file/sub")
      assert.is_nil(h)
      assert.equal("data_dir: mkdirs " .. dir .. "/file/sub: Not a directory", err)
    end)

    it("reports a moonops.db that is not a database", function()
      T.write(dir .. "/moonops.db", string.rep("garbage ", 1000))
      local h, err = db.open(dir)
      assert.is_nil(h)
      assert.equal("store " .. dir .. "/moonops.db: file is not a database", err)
    end)

    it("raises on a missing data_dir argument", function()
      assert.has_error(function() db.open() end)
      assert.has_error(function() db.open("") end)
      assert.has_error(function() db.open({}) end)
    end)

    it("lets several processes open a new data_dir at once", function()
      -- Eight processes race to create each of 15 new databases: switching a new file
      -- to WAL while another holds it must wait, not fail with "database is locked".
      local script = dir .. "/open.lua"
      T.write(script, [[
        local h, err = require("moonops.db").open(arg[1])
        if not h then io.stderr:write("FAIL ", tostring(err), "\n") os.exit(1) end
        h:close()
      ]])
      local out = T.sh(string.format(
        "for i in $(seq 15); do for j in 1 2 3 4 5 6 7 8; do %s lua %s %s/race-$i & done; wait; done 2>&1",
        T.q(T.bin), T.q(script), T.q(dir)))
      assert.equal("", out)
      local h <close> = assert(db.open(dir .. "/race-15"))
      assert.equal(db.SCHEMA_VERSION, db.version(h))
    end)
  end)

  describe("migrate", function()
    local function v2(extra)
      local list = { db.migrations[1] }
      list[2] = extra
      return list
    end

    it("applies newer migrations in one transaction each, keeping the data", function()
      local h <close> = assert(db.open(dir))
      h:exec("INSERT INTO workspaces (id, name) VALUES ('w1', 'dev')")
      local list = v2("ALTER TABLE workspaces ADD COLUMN label TEXT; UPDATE workspaces SET label = 'x'")
      assert.equal(2, db.migrate(h, list))
      assert.same({ id = "w1", name = "dev", label = "x" }, h:one("SELECT id, name, label FROM workspaces"))
      assert.equal(2, db.migrate(h, list)) -- nothing left to do
      h:close()
      -- this moonops only knows schema 1 now
      local newer, err = db.open(dir)
      assert.is_nil(newer)
      assert.matches("schema 2, this one knows 1", err)
    end)

    it("rolls a failing migration back and reports it", function()
      local h <close> = assert(db.open(dir))
      local list = v2(function(conn)
        assert(conn:exec("CREATE TABLE half_done (x)"))
        error("disk on fire", 0)
      end)
      local v, err = db.migrate(h, list)
      assert.is_nil(v)
      assert.equal(dir .. "/moonops.db: migration to schema 2 failed: disk on fire", err)
      assert.equal(1, db.version(h))
      assert.is_nil(h:one("SELECT name FROM sqlite_master WHERE name = 'half_done'"))
      local bad_sql = v2("CREATE TABLE ok_table (x); CREATE TABLE broken (")
      assert.is_nil(db.migrate(h, bad_sql))
      assert.is_nil(h:one("SELECT name FROM sqlite_master WHERE name = 'ok_table'"))
      assert.equal(1, db.version(h))
    end)
  end)

  describe("schema rules", function()
    local h
    before_each(function() h = assert(db.open(dir)) end)
    after_each(function() h:close() end)

    local function deployment(status)
      return h:exec("INSERT INTO deployments (workspace_id, workspace, status, trigger, created_at) "
        .. "VALUES (?, ?, ?, ?, ?)", "w1", "dev", status, "manual", db.now())
    end

    it("accepts only the documented deployment statuses", function()
      for _, s in ipairs({ "QUEUED", "RUNNING", "COMPLETE", "ERROR", "SUPERSEDED", "INTERRUPTED" }) do
        assert.equal(1, deployment(s))
      end
      local n, err, code = deployment("DONE")
      assert.is_nil(n)
      assert.matches("CHECK constraint failed", err)
      assert.equal("constraint", code)
    end)

    it("records a delivery once, pointing at an existing deployment", function()
      deployment("QUEUED")
      local id = h:last_insert_id()
      local sql = "INSERT INTO deliveries (workspace_id, provider, delivery, event, deployment_id, received_at) "
        .. "VALUES (?, ?, ?, ?, ?, ?)"
      assert.equal(1, h:exec(sql, "w1", "github", "d-1", "push", id, db.now()))
      local _, _, dup = h:exec(sql, "w1", "github", "d-1", "push", id, db.now())
      assert.equal("constraint", dup)
      local _, _, fk = h:exec(sql, "w1", "github", "d-2", "push", id + 100, db.now())
      assert.equal("constraint", fk)
      assert.equal(1, h:exec(sql, "w1", "gitlab", "d-1", "push", nil, db.now()))
    end)

    it("gives deployments increasing ids that are never reused", function()
      deployment("QUEUED")
      local first = h:last_insert_id()
      h:exec("DELETE FROM deployments")
      deployment("QUEUED")
      assert.is_true(h:last_insert_id() > first)
    end)
  end)

  describe("times", function()
    it("now is RFC 3339 UTC with a Z", function()
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", db.now())
      assert.equal("2026-11-26T12:00:00Z", db.now(1795694400))
      assert.equal("1970-01-01T00:00:00Z", db.now(0))
    end)

    it("time parses what now writes", function()
      assert.equal(1795694400, db.time("2026-11-26T12:00:00Z"))
      assert.equal(951868799, db.time("2000-02-29T23:59:59Z"))
      assert.equal(0, db.time("1970-01-01T00:00:00+00:00"))
      assert.equal(1795694400, db.time("2026-11-26T12:00:00.250Z"))
      local now = os.time()
      assert.equal(now, db.time(db.now(now)))
    end)

    it("time refuses other text", function()
      for _, bad in ipairs({ "", "yesterday", "2026-13-01T00:00:00Z", "2026-11-26T12:00:00+02:00",
        "2026-11-26", 42 }) do
        assert.is_nil(db.time(bad), tostring(bad))
      end
    end)
  end)
end)
