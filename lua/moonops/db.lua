--- The engine's state database: `<data_dir>/moonops.db`, its schema and migrations.
-- Each migration runs inside one transaction and bumps `PRAGMA user_version`, so a
-- database is always at exactly one known schema version.
local fs = require "moonops.fs"
local store = require "moonops.store"

local M = {}

M.FILE = "moonops.db"

--- Schema migrations, in order: migration N takes a database from version N-1 to N.
-- Each is SQL text (several statements allowed) or a function(db) that raises on failure.
M.migrations = {
  -- 1: the initial schema
  [[
  CREATE TABLE workspaces (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    active_environment TEXT,
    current_release TEXT,
    current_commit TEXT,
    current_deployment INTEGER,
    updated_at TEXT
  );
  CREATE TABLE deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL,
    workspace TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN
      ('QUEUED', 'RUNNING', 'COMPLETE', 'ERROR', 'SUPERSEDED', 'INTERRUPTED')),
    trigger TEXT NOT NULL,
    delivery TEXT,
    ref TEXT,
    after TEXT,
    commit_sha TEXT,
    release TEXT,
    rollback_of INTEGER,
    pid INTEGER,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    error TEXT,
    log TEXT
  );
  CREATE INDEX deployments_workspace_status ON deployments (workspace_id, status);
  CREATE INDEX deployments_workspace_id ON deployments (workspace_id, id);
  CREATE TABLE deliveries (
    workspace_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    delivery TEXT NOT NULL,
    event TEXT,
    deployment_id INTEGER REFERENCES deployments (id),
    received_at TEXT NOT NULL,
    PRIMARY KEY (workspace_id, provider, delivery)
  );
  CREATE TABLE schedule_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    exit_code INTEGER,
    log_path TEXT
  );
  CREATE INDEX schedule_runs_schedule ON schedule_runs (schedule, id);
  CREATE TABLE image_builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace TEXT,
    commit_sha TEXT,
    image TEXT,
    tags TEXT,
    digest TEXT,
    builder TEXT,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    error TEXT,
    log TEXT
  );
  CREATE INDEX image_builds_workspace ON image_builds (workspace, id);
  CREATE TABLE promotions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT,
    target TEXT,
    branch TEXT,
    status TEXT NOT NULL,
    old_commit TEXT,
    commit_sha TEXT,
    backup_ref TEXT,
    created_at TEXT NOT NULL,
    result TEXT
  );
  ]],
}

M.SCHEMA_VERSION = #M.migrations

--- The current time (or epoch seconds `t`) as RFC 3339 UTC text: 2026-11-26T12:00:00Z.
function M.now(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", t)
end

-- Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

--- Epoch seconds of an RFC 3339 UTC time written by `now` (a `Z` or `+00:00` suffix; fractions
-- are dropped); nil for anything else.
function M.time(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec, rest = s:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ](%d%d):(%d%d):(%d%d)(.*)$")
  if not y then return nil end
  rest = rest:gsub("^%.%d+", "")
  if rest ~= "Z" and rest ~= "+00:00" and rest ~= "" then return nil end
  y, mo, d, h, mi, sec = tonumber(y), tonumber(mo), tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
  if mo < 1 or mo > 12 or d < 1 or d > 31 or h > 23 or mi > 59 or sec > 60 then return nil end
  return math.tointeger(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec)
end

--- The schema version stored in an open database (`PRAGMA user_version`).
-- Returns nil, err when the file is not a readable SQLite database.
function M.version(db)
  local row, err = db:one("PRAGMA user_version")
  if not row then return nil, err end
  return row.user_version
end

local function newer_message(path, found, known)
  return string.format("%s was written by a newer moonops (schema %d, this one knows %d): "
    .. "upgrade moonops or use another data_dir", path, found, known)
end

--- Bring an open database up to the last of `migrations` (default M.migrations).
-- Returns the version reached, or nil, err when the database is newer or a migration fails
-- (that migration is rolled back; the earlier ones stay).
function M.migrate(db, migrations)
  migrations = migrations or M.migrations
  local known = #migrations
  local path = db:path()
  local found, verr = M.version(db)
  if not found then return nil, verr end
  if found > known then return nil, newer_message(path, found, known), "newer" end
  for target = found + 1, known do
    local step = migrations[target]
    local ok, done, txerr = pcall(db.tx, db, function()
      -- Another process may have migrated between our read and our lock.
      local now = assert(M.version(db))
      if now >= target then return true end
      if type(step) == "function" then
        step(db)
      else
        local _, e = db:exec(step)
        if e then error(e, 0) end
      end
      assert(db:exec(string.format("PRAGMA user_version = %d", target)))
      return true
    end)
    if not ok or not done then -- raised, or the transaction could not begin or commit
      local why = ok and txerr or done
      return nil, string.format("%s: migration to schema %d failed: %s", path, target, tostring(why))
    end
  end
  return M.version(db)
end

--- Open (creating when needed) `<data_dir>/moonops.db`, migrated to SCHEMA_VERSION.
-- data_dir is created 0700 and the process umask becomes 077, so the state, repositories
-- and releases written under it are private to the user. opts: {busy_timeout = ms}.
-- Returns the store handle, or nil, err.
function M.open(data_dir, opts)
  if type(data_dir) ~= "string" or data_dir == "" then
    error("db.open: data_dir must be a non-empty string", 2)
  end
  fs.umask(tonumber("077", 8))
  local ok, err = fs.mkdirs(data_dir, tonumber("700", 8))
  if not ok then return nil, "data_dir: " .. tostring(err) end
  local path = data_dir:gsub("/+$", "") .. "/" .. M.FILE
  local db, oerr = store.open(path, { busy_timeout = opts and opts.busy_timeout })
  if not db then return nil, oerr end
  local version, merr, code = M.migrate(db)
  if not version then
    db:close()
    return nil, merr, code
  end
  return db
end

--- Store calls that raise their error instead of returning nil, err (busy, constraint):
-- for code where a failed statement must abort the whole operation.
M.must = {}

function M.must.exec(db, sql, ...)
  local n, err = db:exec(sql, ...)
  if n == nil then error(err, 0) end
  return n
end

function M.must.one(db, sql, ...)
  local row, err = db:one(sql, ...)
  if row == nil and err ~= nil then error(err, 0) end
  return row
end

function M.must.rows(db, sql, ...)
  local list, err = db:rows(sql, ...)
  if list == nil then error(err, 0) end
  return list
end

function M.must.tx(db, fn)
  local r = table.pack(db:tx(fn))
  if r[1] == nil and r[2] ~= nil then error(r[2], 0) end
  return table.unpack(r, 1, r.n)
end

return M
