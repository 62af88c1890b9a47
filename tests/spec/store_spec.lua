local T = require "support.t"
local engine = require "moonops.engine"
local errors = require "moonops.errors"
local json = require "moonops.json"
local store = require "moonops.store"

describe("moonops.store", function()
  local dir, path, db

  before_each(function()
    dir = T.tmpdir()
    path = dir .. "/state.db"
    db = assert(store.open(path))
    assert(db:exec([[
      CREATE TABLE item (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,
                         qty INTEGER CHECK (qty >= 0), price REAL, data BLOB, note TEXT);
      CREATE TABLE tag (item_id INTEGER NOT NULL REFERENCES item (id), tag TEXT NOT NULL);
    ]]))
  end)

  after_each(function()
    db:close()
    T.cleanup()
  end)

  describe("open", function()
    it("creates the file in WAL mode with foreign keys on and a 5 s busy timeout", function()
      assert.equal("regular file\n", T.sh("stat -c %F " .. T.q(path)))
      assert.equal("wal", db:one("PRAGMA journal_mode").journal_mode)
      assert.equal(1, db:one("PRAGMA foreign_keys").foreign_keys)
      assert.equal(5000, db:one("PRAGMA busy_timeout").timeout)
      assert.equal(path, db:path())
    end)

    it("takes a busy timeout", function()
      local other = assert(store.open(path, { busy_timeout = 250 }))
      assert.equal(250, other:one("PRAGMA busy_timeout").timeout)
      other:close()
    end)

    it("returns nil and a message naming the path when the file cannot be opened", function()
      local bad = dir .. "/missing/dir/x.db"
      local h, err, code = store.open(bad)
      assert.is_nil(h)
      assert.equal("store " .. bad .. ": unable to open database file", err)
      assert.equal("cantopen", code)
    end)

    it("refuses a file that is not a database", function()
      T.write(dir .. "/junk.db", string.rep("this is not sqlite\n", 100))
      local h, err, code = store.open(dir .. "/junk.db")
      assert.is_nil(h)
      assert.matches("^store .*junk%.db: file is not a database$", err)
      assert.equal("corrupt", code)
    end)

    it("opens read-only", function()
      db:exec("INSERT INTO item (name) VALUES ('a')")
      local ro = assert(store.open(path, { readonly = true }))
      assert.equal("a", ro:one("SELECT name FROM item").name)
      local n, err, code = ro:exec("INSERT INTO item (name) VALUES ('b')")
      assert.is_nil(n)
      assert.matches("readonly", err)
      assert.equal("readonly", code)
      ro:close()
    end)

    it("raises on misuse", function()
      assert.has_error(function() store.open() end)
      assert.has_error(function() store.open(path, "fast") end)
      assert.has_error(function() store.open(path, { busy_timeout = -1 }) end)
      assert.has_error(function() store.open(path, { busy_timeout = "soon" }) end)
    end)
  end)

  describe("exec", function()
    it("returns the number of changed rows", function()
      assert.equal(1, db:exec("INSERT INTO item (name, qty) VALUES (?, ?)", "a", 1))
      assert.equal(1, db:exec("INSERT INTO item (name, qty) VALUES (?, ?)", "b", 2))
      assert.equal(2, db:exec("UPDATE item SET qty = qty + 1"))
      assert.equal(2, db:changes())
      assert.equal(0, db:exec("UPDATE item SET qty = 0 WHERE name = ?", "nobody"))
      assert.equal(0, db:exec("CREATE TABLE other (x)"))
      assert.equal(0, db:exec("SELECT * FROM item"))
      assert.equal(2, db:exec("DELETE FROM item"))
    end)

    it("runs several statements when no values are bound", function()
      assert.equal(3, db:exec([[
        INSERT INTO item (name) VALUES ('a');
        INSERT INTO item (name) VALUES ('b');
        -- a comment between statements
        UPDATE item SET qty = 5 WHERE name = 'a';
      ]]))
      assert.equal(2, db:one("SELECT count(*) AS n FROM item").n)
    end)

    it("refuses several statements with bound values", function()
      assert.has_error(function()
        db:exec("INSERT INTO item (name) VALUES (?); DELETE FROM item", "a")
      end)
      assert.is_nil(db:one("SELECT * FROM item"))
    end)

    it("reports the insert id", function()
      db:exec("INSERT INTO item (name) VALUES (?)", "a")
      local id = db:last_insert_id()
      assert.equal("integer", math.type(id))
      assert.equal("a", db:one("SELECT name FROM item WHERE id = ?", id).name)
    end)
  end)

  describe("parameters and values", function()
    it("round-trip integers, floats, text, blobs and NULL", function()
      local blob = "\0\1\2\255binary\0"
      local latin1 = "caf\233" -- not UTF-8
      db:exec("INSERT INTO item (name, qty, price, data, note) VALUES (?, ?, ?, ?, ?)",
        "ünïcødé ✓", 42, 2.5, blob, nil)
      db:exec("INSERT INTO item (name, qty, price, data) VALUES (?, ?, ?, ?)", latin1, 9007199254740993, 3.0, "")
      local rows = db:rows("SELECT * FROM item ORDER BY id")
      assert.equal(2, #rows)
      assert.same({ id = 1, name = "ünïcødé ✓", qty = 42, price = 2.5, data = blob }, rows[1])
      assert.equal("integer", math.type(rows[1].qty))
      assert.equal("float", math.type(rows[1].price))
      assert.is_nil(rows[1].note)
      assert.equal(latin1, rows[2].name)
      assert.equal(9007199254740993, rows[2].qty)
      assert.equal("float", math.type(rows[2].price))
      assert.equal("", rows[2].data)
    end)

    it("bind text as TEXT and bytes that are not UTF-8 as BLOB", function()
      local r = db:one("SELECT typeof(?) AS a, typeof(?) AS b, typeof(?) AS c", "text", "a\0b", "\255")
      assert.same({ a = "text", b = "blob", c = "blob" }, r)
    end)

    it("bind booleans as 0/1 and nil, json.null and trailing nils as NULL", function()
      local r = db:one("SELECT ? AS t, ? AS f, ? IS NULL AS n1, ? IS NULL AS n2, ? IS NULL AS n3",
        true, false, json.null, nil, nil)
      assert.same({ t = 1, f = 0, n1 = 1, n2 = 1, n3 = 1 }, r)
    end)

    it("raise when the number of values does not match the SQL", function()
      assert.has_error(function() db:rows("SELECT ? AS a, ? AS b", 1) end,
        "store " .. path .. ": the SQL has 2 parameters, 1 value given (in \"SELECT ? AS a, ? AS b\")")
      assert.has_error(function() db:one("SELECT 1", 1) end)
      assert.has_error(function() db:exec("INSERT INTO item (name) VALUES (?)") end)
    end)

    it("raise for values SQL cannot hold", function()
      assert.has_error(function() db:exec("INSERT INTO item (name) VALUES (?)", {}) end)
      assert.has_error(function() db:exec("INSERT INTO item (name) VALUES (?)", print) end)
      assert.has_error(function() db:one("SELECT ?", io.stdout) end)
    end)

    it("never splice values into SQL", function()
      local evil = "x'); DROP TABLE item; --"
      db:exec("INSERT INTO item (name) VALUES (?)", evil)
      assert.equal(evil, db:one("SELECT name FROM item").name)
    end)
  end)

  describe("rows and one", function()
    before_each(function()
      for i, name in ipairs({ "a", "b", "c" }) do
        db:exec("INSERT INTO item (name, qty) VALUES (?, ?)", name, i)
      end
    end)

    it("rows returns an array of tables keyed by column name", function()
      local rows = db:rows("SELECT name, qty * 10 AS tens FROM item WHERE qty >= ? ORDER BY qty", 2)
      assert.same({ { name = "b", tens = 20 }, { name = "c", tens = 30 } }, rows)
      assert.equal(engine.array_mt, getmetatable(rows))
    end)

    it("rows of an empty result is an empty array (JSON [])", function()
      local rows = db:rows("SELECT * FROM item WHERE qty > 100")
      assert.same({}, rows)
      assert.equal("[]", json.encode(rows))
    end)

    it("one returns the first row or nil", function()
      assert.same({ name = "a" }, db:one("SELECT name FROM item ORDER BY qty"))
      assert.is_nil(db:one("SELECT name FROM item WHERE name = ?", "zzz"))
    end)

    it("raise on SQL that does not compile, naming the SQL", function()
      local ok, err = pcall(db.rows, db, "SELECT nope FROM item")
      assert.is_false(ok)
      assert.equal("store " .. path .. ": no such column: nope (in \"SELECT nope FROM item\")", err)
      assert.has_error(function() db:one("SELEC 1") end)
      assert.has_error(function() db:rows(42) end)
      assert.has_error(function() db:rows() end)
    end)

    it("keep working past the statement cache and after a schema change", function()
      for i = 1, 60 do
        assert.equal(i, db:one("SELECT ? + " .. i .. " AS v", 0).v)
      end
      assert.equal(1, db:one("SELECT ? + 1 AS v", 0).v)
      local before = db:one("SELECT * FROM item WHERE name = ?", "a")
      assert.is_nil(before.extra)
      db:exec("ALTER TABLE item ADD COLUMN extra TEXT DEFAULT 'x'")
      assert.equal("x", db:one("SELECT * FROM item WHERE name = ?", "a").extra)
    end)
  end)

  describe("expected failures", function()
    it("a UNIQUE violation is nil, message, 'constraint'", function()
      db:exec("INSERT INTO item (name) VALUES (?)", "a")
      local n, err, code = db:exec("INSERT INTO item (name) VALUES (?)", "a")
      assert.is_nil(n)
      assert.equal("store " .. path .. ": UNIQUE constraint failed: item.name", err)
      assert.equal("constraint", code)
    end)

    it("CHECK, NOT NULL and foreign key violations are constraints too", function()
      local _, _, c1 = db:exec("INSERT INTO item (name, qty) VALUES (?, ?)", "a", -1)
      local _, _, c2 = db:exec("INSERT INTO item (name) VALUES (?)", nil)
      local _, err, c3 = db:exec("INSERT INTO tag (item_id, tag) VALUES (?, ?)", 999, "x")
      assert.same({ "constraint", "constraint", "constraint" }, { c1, c2, c3 })
      assert.matches("FOREIGN KEY constraint failed", err)
      assert.is_nil(db:one("SELECT * FROM tag"))
    end)

    it("a write while another connection holds the write lock is 'busy' after the timeout", function()
      local other = assert(store.open(path, { busy_timeout = 0 }))
      local held = coroutine.wrap(function()
        db:tx(function()
          db:exec("INSERT INTO item (name) VALUES ('held')")
          coroutine.yield()
        end)
      end)
      held() -- db now holds the write lock, suspended inside its transaction
      assert.is_true(db:in_tx())
      local n, err, code = other:exec("INSERT INTO item (name) VALUES ('other')")
      assert.is_nil(n)
      assert.equal("store " .. path .. ": database is locked", err)
      assert.equal("busy", code)
      local r, terr, tcode = other:tx(function() return "ran" end)
      assert.is_nil(r)
      assert.matches("database is locked", terr)
      assert.equal("busy", tcode)
      -- readers are not blocked by a writer in WAL mode, and do not see its uncommitted row
      assert.equal(0, other:one("SELECT count(*) AS n FROM item").n)
      held() -- commit
      assert.equal("held", other:one("SELECT name FROM item").name)
      assert.equal(1, other:exec("INSERT INTO item (name) VALUES ('other')"))
      other:close()
    end)
  end)

  describe("tx", function()
    it("commits and returns fn's results", function()
      local a, b, c = db:tx(function()
        db:exec("INSERT INTO item (name) VALUES ('a')")
        return 1, nil, "three"
      end)
      assert.same({ 1, nil, "three" }, { a, b, c })
      assert.is_false(db:in_tx())
      assert.equal(1, db:one("SELECT count(*) AS n FROM item").n)
    end)

    it("rolls back and re-raises the original error object", function()
      local raised = errors.new("deployment failed", errors.FAILURE)
      local ok, err = pcall(db.tx, db, function()
        db:exec("INSERT INTO item (name) VALUES ('a')")
        assert.is_true(db:in_tx())
        error(raised)
      end)
      assert.is_false(ok)
      assert.equal(raised, err)
      assert.is_true(errors.is(err))
      assert.is_false(db:in_tx())
      assert.is_nil(db:one("SELECT * FROM item"))
      -- and the connection is usable afterwards
      assert.equal(1, db:exec("INSERT INTO item (name) VALUES ('b')"))
    end)

    it("rolls back on a string error too", function()
      local ok, err = pcall(db.tx, db, function()
        db:exec("INSERT INTO item (name) VALUES ('a')")
        error("boom", 0)
      end)
      assert.is_false(ok)
      assert.equal("boom", err)
      assert.equal(0, db:one("SELECT count(*) AS n FROM item").n)
    end)

    it("nests with savepoints: an inner failure undoes only the inner work", function()
      db:tx(function()
        db:exec("INSERT INTO item (name) VALUES ('outer')")
        local ok = pcall(db.tx, db, function()
          db:exec("INSERT INTO item (name) VALUES ('inner')")
          db:tx(function() db:exec("INSERT INTO item (name) VALUES ('innermost')") end)
          error("inner fails")
        end)
        assert.is_false(ok)
        assert.is_true(db:in_tx())
        db:tx(function() db:exec("INSERT INTO item (name) VALUES ('second')") end)
      end)
      local names = {}
      for _, r in ipairs(db:rows("SELECT name FROM item ORDER BY id")) do names[#names + 1] = r.name end
      assert.same({ "outer", "second" }, names)
    end)

    it("an outer failure undoes the committed inner savepoints", function()
      pcall(db.tx, db, function()
        db:tx(function() db:exec("INSERT INTO item (name) VALUES ('inner')") end)
        error("outer fails")
      end)
      assert.is_nil(db:one("SELECT * FROM item"))
      assert.is_false(db:in_tx())
    end)

    it("survives a coroutine yield inside fn", function()
      local co = coroutine.wrap(function()
        return db:tx(function()
          db:exec("INSERT INTO item (name) VALUES ('a')")
          local v = coroutine.yield("paused")
          db:exec("INSERT INTO item (name) VALUES (?)", v)
          return "done"
        end)
      end)
      assert.equal("paused", co())
      assert.equal("done", co("b"))
      assert.is_false(db:in_tx())
      assert.equal(2, db:one("SELECT count(*) AS n FROM item").n)
    end)

    it("raises when fn is not a function", function()
      assert.has_error(function() db:tx() end)
      assert.has_error(function() db:tx("BEGIN") end)
    end)
  end)

  describe("closing", function()
    it("is idempotent and makes every method raise 'use of a closed store'", function()
      local h = assert(store.open(path))
      h:close()
      h:close()
      assert.equal("store (closed)", tostring(h))
      for _, call in ipairs({
        function() h:exec("SELECT 1") end,
        function() h:rows("SELECT 1") end,
        function() h:one("SELECT 1") end,
        function() h:tx(function() end) end,
        function() h:last_insert_id() end,
        function() h:changes() end,
        function() h:path() end,
      }) do
        assert.has_error(call, "use of a closed store")
      end
    end)

    it("closes at the end of a <close> scope and on garbage collection", function()
      local kept
      do
        local h <close> = assert(store.open(path))
        kept = h
        assert.equal(0, h:one("SELECT count(*) AS n FROM item").n)
      end
      assert.has_error(function() kept:one("SELECT 1") end, "use of a closed store")
      for _ = 1, 50 do store.open(path) end
      collectgarbage()
      collectgarbage()
    end)

    it("closing inside a transaction rolls it back", function()
      local h = assert(store.open(path))
      local ok, err = pcall(h.tx, h, function()
        h:exec("INSERT INTO item (name) VALUES ('lost')")
        h:close()
        error("after close", 0)
      end)
      assert.is_false(ok)
      assert.equal("after close", err)
      assert.is_nil(db:one("SELECT * FROM item"))
    end)
  end)
end)
