--- The REST routes of `moonops serve` (design §7). This module is the handler
-- of moonops.server: every worker thread loads it once into its own Lua state,
-- calls init(context) and then handle(req) for each request.
--
-- context: {config = path of moonops.yml, channel = notify channel of the deploy
-- worker, log_format = "text"|"json", quiet = bool, debug = bool}
local crypto = require "moonops.crypto"
local db_mod = require "moonops.db"
local deploy = require "moonops.deploy"
local json = require "moonops.json"
local log = require "moonops.log"
local notify = require "moonops.notify"
local server = require "moonops.server"
local settings_mod = require "moonops.settings"
local webhook = require "moonops.webhook"
local workspace = require "moonops.workspace"

local M = {}

M.DEFAULT_QUEUE_SIZE = 100
M.RETRY_AFTER = "10"

local state = {
  ctx = nil,
  settings = nil,
  db = nil,
  generation = 0,
  tokens = {},
  secrets = {}, -- workspace id -> list (cached per settings generation)
  receive_opts = {}, -- workspace -> route provider -> options for webhook.receive
  routes = {}, -- path -> {workspace, provider} of webhook paths seen (bounded)
  nroutes = 0,
  channel = nil,
}

local JSON_HEADERS = { ["Content-Type"] = "application/json" }

-- ---------------------------------------------------------------------------
-- Settings, tokens and secrets (re-read when the server's generation changes)

local function read_tokens(s)
  local tokens = {}
  local function add(text)
    for t in tostring(text):gmatch("[^,%s]+") do
      tokens[#tokens + 1] = crypto.digest("sha256", t)
      log.secret(t)
    end
  end
  if s.server.api_tokens_env then add(os.getenv(s.server.api_tokens_env) or "") end
  if s.server.api_tokens_file then
    local f = io.open(s.server.api_tokens_file, "r")
    if f then
      add(f:read("a") or "")
      f:close()
    else
      log.warn("cannot read server.api_tokens_file " .. s.server.api_tokens_file)
    end
  end
  return tokens
end

local function use_settings(s)
  if state.db and state.settings and state.settings.data_dir ~= s.data_dir then
    state.db:close()
    state.db = nil
  end
  if not state.db then
    local db, err = db_mod.open(s.data_dir)
    if not db then error("open the state database: " .. tostring(err), 0) end
    state.db = db
  end
  state.settings = s
  state.tokens = read_tokens(s)
  state.secrets = {}
  state.receive_opts = {}
  state.routes, state.nroutes = {}, 0
end

local function refresh(generation)
  if generation == state.generation then return end
  state.generation = generation
  local ok, s = pcall(settings_mod.load, state.ctx.config)
  if not ok then
    log.warn("reload " .. tostring(state.ctx.config) .. " failed, keeping the old settings: " .. tostring(s))
    return
  end
  local ok2, err = pcall(use_settings, s)
  if not ok2 then log.error("reload failed, keeping the old settings: " .. tostring(err)) end
end

local function secrets_of(ws)
  local list = state.secrets[ws.id]
  if not list then
    local problems
    list, problems = settings_mod.workspace_secrets(ws)
    for _, p in ipairs(problems or {}) do log.warn(p) end
    state.secrets[ws.id] = list
  end
  return list
end

--- init(context [, worker index]): called once in each worker state.
function M.init(ctx)
  state.ctx = ctx or {}
  log.configure({ format = state.ctx.log_format or "text", level = state.ctx.debug and "debug" or "info",
    quiet = state.ctx.quiet })
  use_settings(settings_mod.load(state.ctx.config))
  require("moonops.plugins").load_enabled(state.settings)
  state.channel = assert(notify.channel(state.ctx.channel or "moonops.deploy"))
end

-- ---------------------------------------------------------------------------
-- Answers

local function answer(status, doc, extra)
  local headers = JSON_HEADERS
  if extra then
    headers = { ["Content-Type"] = "application/json" }
    for k, v in pairs(extra) do headers[k] = v end
  end
  return status, headers, json.encode(doc) .. "\n"
end

local function problem(status, message, extra)
  return answer(status, { error = message }, extra)
end

local function bearer_ok(req)
  local auth = req.headers.authorization
  local token = auth and auth:match("^[Bb]earer%s+(%S+)%s*$")
  if not token then return false end
  local digest = crypto.digest("sha256", token)
  local ok = false
  for _, known in ipairs(state.tokens) do
    if crypto.equal(known, digest) then ok = true end
  end
  return ok
end

local function find_workspace(id)
  local s = state.settings
  return s.by_id[id] or s.by_name[id]
end

local function workspace_json(ws)
  local st = workspace.state(state.db, ws)
  local function v(x)
    if x == nil then return json.null end
    return x
  end
  return {
    id = ws.id,
    name = ws.name,
    branch = ws.branch,
    repository = workspace.safe_url(ws.repository),
    environment = v(st.active_environment or ws.environment),
    current_commit = v(st.current_commit),
    current_release = v(st.current_release),
    current_deployment = v(st.current_deployment),
  }
end

-- Deployments queued or running, counted per configured workspace so the
-- (workspace_id, status) index answers it however long the history is.
local function queue_depth(db)
  local n = 0
  for _, ws in ipairs(state.settings.workspaces) do
    local row = db:one([[SELECT count(*) AS n FROM deployments WHERE workspace_id = ?
      AND status IN ('QUEUED', 'RUNNING')]], tostring(ws.id))
    n = n + (row and row.n or 0)
  end
  return n
end

-- In one transaction: a redelivery answers with its deployment; else the queue
-- limit is checked, the deployment queued (older queued ones superseded) and
-- the delivery recorded. Returns row, "queued" | "redelivery" | "full".
-- Everything runs inside the one BEGIN ... COMMIT: reads there need no locks of
-- their own, and the commit is the only write to the WAL.
-- In a batch (accept_job.batch set), what earlier deliveries of the same batch
-- established is remembered per workspace id: {queued = the newest id queued}. The
-- older QUEUED rows are then superseded once, at the end of the batch.
local accept_job = {}
local function accept_in_tx()
  local db, ws, fields, wid = state.db, accept_job.ws, accept_job.fields, accept_job.wid
  local delivery = fields.delivery
  if delivery then
    local seen = db:one([[SELECT d.* FROM deliveries AS v JOIN deployments AS d ON d.id = v.deployment_id
      WHERE v.workspace_id = ? AND v.provider = ? AND v.delivery = ?]], wid, accept_job.provider, delivery)
    if seen then return seen, "redelivery" end
  end
  local batch = accept_job.batch
  local earlier = batch and batch[wid]
  if not earlier then
    local queued = db:one("SELECT 1 AS x FROM deployments WHERE workspace_id = ? AND status = 'QUEUED' LIMIT 1", wid)
    if not queued and queue_depth(db) >= (state.settings.server.queue_size or M.DEFAULT_QUEUE_SIZE) then
      return nil, "full"
    end
  end
  fields.workspace_known, fields.later_supersede = earlier ~= nil, batch ~= nil
  local row = deploy.enqueue(db, ws, fields)
  if batch then batch[wid] = { ws = ws, newest = row.id } end
  if delivery then
    local _, err = db:exec([[INSERT INTO deliveries(workspace_id, provider, delivery, event, deployment_id, received_at)
      VALUES (?, ?, ?, ?, ?, ?)]], wid, accept_job.provider, delivery, accept_job.event, row.id, row.created_at)
    if err then error(err, 0) end
  end
  return row, "queued"
end

local function accept(ws, fields, provider, event_name)
  accept_job.ws, accept_job.fields, accept_job.wid = ws, fields, tostring(ws.id)
  accept_job.provider, accept_job.event = provider, event_name
  return state.db:tx(accept_in_tx)
end

-- A deferred delivery travels to the batch thread as one string (the server passes
-- strings between Lua states): flags (1 = delivery id present, 2 = after present) and
-- the fields below, length-prefixed.
local JOB_FORMAT = "Bs4s4s4s4s4s4s4s4s4s4"

local function job_text(req, ws, event, change)
  local flags = (event.delivery and 1 or 0) | (change.after and 2 or 0)
  return string.pack(JOB_FORMAT, flags, tostring(ws.id), event.provider, event.event or "push",
    event.delivery or "", change.ref, change.after or "", req.id or "", req.method or "", req.path or "",
    req.remote or "")
end

local function job_of(text)
  local flags, wid, provider, event, delivery, ref, after, id, method, path, remote = string.unpack(JOB_FORMAT, text)
  return {
    wid = wid, provider = provider, event = event, ref = ref,
    delivery = flags & 1 ~= 0 and delivery or nil, after = flags & 2 ~= 0 and after or nil,
    req = { id = id, method = method, path = path, remote = remote },
  }
end

-- The same few reasons come back on every filtered delivery: encode each once.
local ignored_cache, ignored_cached = {}, 0
local function ignored_answer(reason)
  local text = ignored_cache[reason]
  if not text then
    text = json.encode({ ignored = reason }) .. "\n"
    if ignored_cached < 256 then
      ignored_cache[reason], ignored_cached = text, ignored_cached + 1
    end
  end
  return 200, JSON_HEADERS, text
end

-- ---------------------------------------------------------------------------
-- Routes: each returns outcome, status, headers, body

-- webhook.receive's options per workspace and route provider (built once per settings).
local function receive_opts(ws, route_provider)
  local by_ws = state.receive_opts[ws]
  if not by_ws then
    by_ws = {}
    state.receive_opts[ws] = by_ws
  end
  local opts = by_ws[route_provider]
  if not opts then
    opts = { legacy_sha1 = ws.legacy_sha1 }
    if route_provider ~= "github" then
      opts.provider = route_provider
    elseif ws.provider then
      opts.provider = ws.provider
    end
    by_ws[route_provider] = opts
  end
  return opts
end

local function webhook_route(req, ws, route_provider)
  local event, status, message = webhook.receive(req.headers, req.body, secrets_of(ws), receive_opts(ws, route_provider))
  if not event then
    return status == 401 and "unauthorized" or "bad_request", problem(status, message)
  end
  req.delivery = event.delivery
  local action, detail = webhook.decide(event, ws.branch)
  if action == "ping" then return "ping", answer(200, { pong = true }) end
  if action == "ignore" then return "ignored", ignored_answer(detail) end
  if state.ctx.batch then return "deferred", server.DEFER, job_text(req, ws, event, detail) end
  local ok, row, how = pcall(accept, ws, { trigger = "webhook", delivery = event.delivery, ref = detail.ref,
    after = detail.after }, event.provider, event.event)
  if not ok or (row == nil and how ~= "full") then
    log.error("queue a deployment of " .. ws.name .. ": " .. tostring(ok and how or row), { request = req.id })
    return "unavailable", problem(503, "the deployment queue is unavailable, retry later",
      { ["Retry-After"] = M.RETRY_AFTER })
  end
  if how == "full" then
    return "queue_full", problem(503, "the deployment queue is full, retry later", { ["Retry-After"] = M.RETRY_AFTER })
  end
  req.deployment = row.id
  if how == "redelivery" then return "redelivery", 200, JSON_HEADERS, deploy.json_text(row) end
  state.channel:signal()
  return "accepted", 202, JSON_HEADERS, deploy.json_text(row)
end

local function manual_deploy(req, ws)
  local ref
  if req.body:match("%S") then
    local doc, err = json.decode(req.body)
    if type(doc) ~= "table" or json.is_array(doc) then return "bad_request", problem(400, err or "expected a JSON object") end
    if doc.ref ~= nil and doc.ref ~= json.null then
      if type(doc.ref) ~= "string" or not doc.ref:match("^[%w][%w._/@^~-]*$") or #doc.ref > 255 then
        return "bad_request", problem(400, "ref must be a branch, tag or commit name")
      end
      ref = doc.ref
    end
  end
  local ok, row, how = pcall(accept, ws, { trigger = "manual", ref = ref })
  if not ok or (row == nil and how ~= "full") then
    log.error("queue a deployment of " .. ws.name .. ": " .. tostring(ok and how or row), { request = req.id })
    return "unavailable", problem(503, "the deployment queue is unavailable, retry later",
      { ["Retry-After"] = M.RETRY_AFTER })
  end
  if how == "full" then
    return "queue_full", problem(503, "the deployment queue is full, retry later", { ["Retry-After"] = M.RETRY_AFTER })
  end
  req.deployment = row.id
  state.channel:signal()
  return "accepted", 202, JSON_HEADERS, deploy.json_text(row)
end

local function list_deployments(req, ws)
  local limit = 20
  if req.query.limit then
    limit = math.tointeger(tonumber(req.query.limit))
    if not limit or limit < 1 or limit > 1000 then
      return "bad_request", problem(400, "limit must be a whole number from 1 to 1000")
    end
  end
  local out = json.array()
  for _, row in ipairs(deploy.list(state.db, ws, { limit = limit })) do out[#out + 1] = deploy.to_json(row) end
  return "ok", answer(200, out)
end

local function show_deployment(_, ws, id)
  local n = math.tointeger(tonumber(id))
  local row = n and deploy.get(state.db, ws, n)
  if not row then return "not_found", problem(404, "no deployment " .. id .. " in workspace " .. ws.name) end
  return "ok", answer(200, deploy.to_json(row, { log = true }))
end

local function set_environment(req, ws)
  local doc = json.decode(req.body)
  if type(doc) ~= "table" or type(doc.environment) ~= "string" then
    return "bad_request", problem(400, 'expected {"environment": "<name>"}')
  end
  local ok, err = workspace.use_environment(state.settings, state.db, ws, doc.environment)
  if not ok then
    local status = tostring(err):find("not found", 1, true) and 422 or 409
    return "rejected", problem(status, err)
  end
  return "ok", answer(200, workspace_json(ws))
end

local function list_workspaces()
  local out = json.array()
  for _, ws in ipairs(state.settings.workspaces) do out[#out + 1] = workspace_json(ws) end
  return "ok", answer(200, out)
end

-- ---------------------------------------------------------------------------
-- Metrics (Prometheus text format)

local DURATION_BUCKETS = { 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600 }

local function label(v)
  return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

local function metrics()
  local out = {}
  local function add(line) out[#out + 1] = line end
  add("# HELP moonops_http_requests_total HTTP requests by route and outcome.")
  add("# TYPE moonops_http_requests_total counter")
  local keys = {}
  local counts = server.counts()
  for k in pairs(counts) do
    if k:match("^http|") then keys[#keys + 1] = k end
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local route, outcome, status = k:match("^http|([^|]*)|([^|]*)|(%d*)$")
    if route then
      add(string.format('moonops_http_requests_total{route="%s",outcome="%s",status="%s"} %s', label(route),
        label(outcome), status, tostring(counts[k])))
    end
  end
  add("# HELP moonops_accept_batches_total Transactions that recorded accepted deliveries.")
  add("# TYPE moonops_accept_batches_total counter")
  add("moonops_accept_batches_total " .. tostring(counts["accept|batches"] or 0))
  add("# HELP moonops_accept_batch_deliveries_total Signed pushes to a deployed branch those transactions handled.")
  add("# TYPE moonops_accept_batch_deliveries_total counter")
  add("moonops_accept_batch_deliveries_total " .. tostring(counts["accept|deliveries"] or 0))
  local db = state.db
  add("# HELP moonops_queue_depth Deployments queued or running.")
  add("# TYPE moonops_queue_depth gauge")
  add("moonops_queue_depth " .. queue_depth(db))
  add("# HELP moonops_deployments Deployments recorded, by status.")
  add("# TYPE moonops_deployments gauge")
  local by_status = {}
  for _, r in ipairs(db:rows("SELECT status, count(*) AS n FROM deployments GROUP BY status") or {}) do
    by_status[r.status] = r.n
  end
  for _, st in ipairs(deploy.STATUSES) do
    add(string.format('moonops_deployments{status="%s"} %d', st, by_status[st] or 0))
  end
  add("# HELP moonops_deploy_duration_seconds Time from start to end of finished deployments.")
  add("# TYPE moonops_deploy_duration_seconds histogram")
  local buckets, sum, n = {}, 0, 0
  for i = 1, #DURATION_BUCKETS do buckets[i] = 0 end
  local rows = db:rows([[SELECT strftime('%s', finished_at) - strftime('%s', started_at) AS d FROM deployments
    WHERE status IN ('COMPLETE', 'ERROR') AND started_at IS NOT NULL AND finished_at IS NOT NULL]]) or {}
  for _, r in ipairs(rows) do
    local d = tonumber(r.d) or 0
    n, sum = n + 1, sum + d
    for i, le in ipairs(DURATION_BUCKETS) do
      if d <= le then buckets[i] = buckets[i] + 1 end
    end
  end
  for i, le in ipairs(DURATION_BUCKETS) do
    add(string.format('moonops_deploy_duration_seconds_bucket{le="%s"} %d', tostring(le), buckets[i]))
  end
  add(string.format('moonops_deploy_duration_seconds_bucket{le="+Inf"} %d', n))
  add("moonops_deploy_duration_seconds_sum " .. sum)
  add("moonops_deploy_duration_seconds_count " .. n)
  return table.concat(out, "\n") .. "\n"
end

-- ---------------------------------------------------------------------------
-- Routing

local function method_not_allowed(allow)
  return "method_not_allowed", problem(405, "method not allowed", { Allow = allow })
end

local function with_workspace(id, fn)
  local ws = find_workspace(id)
  if not ws then return "not_found", problem(404, "unknown workspace " .. id) end
  return fn(ws)
end

local function needs_token(req, fn)
  if not bearer_ok(req) then
    return "unauthorized", problem(401, "missing or invalid bearer token", { ["WWW-Authenticate"] = "Bearer" })
  end
  return fn()
end

-- Returns route name, outcome, status, headers, body.
local function route(req)
  local m, path = req.method, req.path
  if path == "/healthz" then
    if m ~= "GET" and m ~= "HEAD" then return "healthz", method_not_allowed("GET, HEAD") end
    return "healthz", "ok", answer(200, { status = "ok" })
  end
  if path == "/metrics" then
    if m ~= "GET" then return "metrics", method_not_allowed("GET") end
    return "metrics", "ok", 200, { ["Content-Type"] = "text/plain; version=0.0.4" }, metrics()
  end
  local known = state.routes[path]
  local id, provider
  if known then
    id, provider = known[1], known[2]
  else
    id, provider = path:match("^/api/workspaces/([^/]+)/deployments/([%w_]+)%-webhook/?$")
    if id and state.nroutes < 256 and find_workspace(id) then
      state.routes[path], state.nroutes = { id, provider }, state.nroutes + 1
    end
  end
  if id then
    if m ~= "POST" then return "webhook", method_not_allowed("POST") end
    if provider ~= "github" and not webhook.provider(provider) then
      return "webhook", "not_found", problem(404, "unknown webhook provider " .. provider)
    end
    local ws = find_workspace(id)
    if not ws then return "webhook", "not_found", problem(404, "unknown workspace " .. id) end
    return "webhook", webhook_route(req, ws, provider)
  end
  id = path:match("^/api/workspaces/([^/]+)/deployments/?$")
  if id then
    if m == "POST" then
      return "deploy", needs_token(req, function() return with_workspace(id, function(ws) return manual_deploy(req, ws) end) end)
    elseif m == "GET" then
      return "deployments", needs_token(req, function()
        return with_workspace(id, function(ws) return list_deployments(req, ws) end)
      end)
    end
    return "deployments", method_not_allowed("GET, POST")
  end
  local dep
  id, dep = path:match("^/api/workspaces/([^/]+)/deployments/([^/]+)/?$")
  if id then
    if m ~= "GET" then return "deployment", method_not_allowed("GET") end
    return "deployment", needs_token(req, function()
      return with_workspace(id, function(ws) return show_deployment(req, ws, dep) end)
    end)
  end
  id = path:match("^/api/workspaces/([^/]+)/environment/?$")
  if id then
    if m ~= "PUT" then return "environment", method_not_allowed("PUT") end
    return "environment", needs_token(req, function()
      return with_workspace(id, function(ws) return set_environment(req, ws) end)
    end)
  end
  id = path:match("^/api/workspaces/([^/]+)/?$")
  if id then
    if m ~= "GET" then return "workspace", method_not_allowed("GET") end
    return "workspace", needs_token(req, function()
      return with_workspace(id, function(ws) return "ok", answer(200, workspace_json(ws)) end)
    end)
  end
  if path == "/api/workspaces" or path == "/api/workspaces/" then
    if m ~= "GET" then return "workspaces", method_not_allowed("GET") end
    return "workspaces", needs_token(req, list_workspaces)
  end
  return "unknown", "not_found", problem(404, "not found")
end

-- Counter names by route, outcome and status, built once each.
local counter_names = {}
local function counter_name(route_name, outcome, status)
  local by_outcome = counter_names[route_name]
  if not by_outcome then
    by_outcome = {}
    counter_names[route_name] = by_outcome
  end
  local by_status = by_outcome[outcome]
  if not by_status then
    by_status = {}
    by_outcome[outcome] = by_status
  end
  local name = by_status[status]
  if not name then
    name = "http|" .. route_name .. "|" .. outcome .. "|" .. tostring(status)
    by_status[status] = name
  end
  return name
end

-- One line per request; never a header value, so never a signature or token.
local function log_request(req, route_name, outcome, status)
  server.count(counter_name(route_name, outcome, status))
  if state.ctx.quiet then return end
  local fields = { request = req.id, method = req.method, path = req.path, status = status, outcome = outcome,
    remote = req.remote, delivery = req.delivery, deployment = req.deployment }
  log.write_line(log.line("info", "request", fields))
end

--- handle(req) -> status, headers, body (or server.DEFER, job: answered by batch)
function M.handle(req)
  refresh(req.generation or 0)
  local ok, route_name, outcome, status, headers, body = pcall(route, req)
  if ok and status == server.DEFER then return status, headers end
  if not ok then
    log.error("request " .. tostring(req.id) .. " failed: " .. tostring(route_name))
    route_name, outcome = "error", "error"
    status, headers, body = problem(500, "internal error (request " .. tostring(req.id) .. ")")
  end
  log_request(req, route_name, outcome, status)
  if req.method == "HEAD" then body = "" end
  return status, headers, body
end

local function batch_answer(job, how, row)
  local req = job.req
  req.delivery, req.deployment = job.delivery, row and row.id
  local outcome, status, headers, body
  if how == "queued" then
    outcome, status, headers, body = "accepted", 202, JSON_HEADERS, deploy.json_text(row)
  elseif how == "redelivery" then
    outcome, status, headers, body = "redelivery", 200, JSON_HEADERS, deploy.json_text(row)
  elseif how == "full" then
    outcome = "queue_full"
    status, headers, body = problem(503, "the deployment queue is full, retry later", { ["Retry-After"] = M.RETRY_AFTER })
  elseif how == "gone" then
    outcome = "not_found"
    status, headers, body = problem(404, "unknown workspace " .. job.wid)
  else
    outcome = "unavailable"
    status, headers, body = problem(503, "the deployment queue is unavailable, retry later",
      { ["Retry-After"] = M.RETRY_AFTER })
  end
  log_request(req, "webhook", outcome, status)
  return { status, headers, body }
end

-- One job inside the batch's transaction, in a savepoint of its own so a failure
-- undoes only its own writes.
local function accept_one(job)
  local ws = find_workspace(job.wid)
  if not ws then return nil, "gone" end
  accept_job.ws, accept_job.wid = ws, job.wid
  accept_job.fields = { trigger = "webhook", delivery = job.delivery, ref = job.ref, after = job.after }
  accept_job.provider, accept_job.event = job.provider, job.event
  local before = accept_job.batch[job.wid]
  local ok, row, how = pcall(state.db.tx, state.db, accept_in_tx)
  if not ok or (row == nil and how ~= "full") then
    accept_job.batch[job.wid] = before -- its savepoint was rolled back
    log.error("queue a deployment of " .. ws.name .. ": " .. tostring(ok and how or row), { request = job.req.id })
    return nil, "error"
  end
  return row, how
end

--- batch(jobs, generation) -> {{status, headers, body}, ...}: the deliveries the
-- workers deferred (accepted pushes), recorded and queued in one transaction, so the
-- store commits once per batch instead of once per delivery. Nothing is answered
-- before that commit.
function M.batch(jobs, generation)
  refresh(generation or 0)
  local parsed, rows, hows = {}, {}, {}
  for i, text in ipairs(jobs) do parsed[i] = job_of(text) end
  local ok, done, err = pcall(state.db.tx, state.db, function()
    accept_job.batch = {}
    for i, job in ipairs(parsed) do rows[i], hows[i] = accept_one(job) end
    for _, queued in pairs(accept_job.batch) do deploy.supersede_older(state.db, queued.ws, queued.newest) end
    return true
  end)
  accept_job.batch = nil
  if not ok then
    err = done
  elseif done ~= true then
    ok = false
  end
  local out, queued = {}, false
  for i, job in ipairs(parsed) do
    if ok then
      out[i] = batch_answer(job, hows[i], rows[i])
      queued = queued or hows[i] == "queued"
    else
      out[i] = batch_answer(job, "error")
    end
  end
  if ok then
    server.count("accept|batches")
    server.count("accept|deliveries", #parsed)
  else
    log.error("record " .. #parsed .. " deliveries: " .. tostring(err))
  end
  if queued then state.channel:signal() end
  return out
end

--- rejected(req, status, reason): a request refused before Lua ran (413, 503
-- while stopping) or whose handler failed; logged and counted like the others.
function M.rejected(req, status, reason)
  local outcome = status == 413 and "too_large" or status == 503 and "unavailable" or "error"
  if status == 500 then log.error("request " .. tostring(req.id) .. " failed: " .. tostring(reason)) end
  log_request(req, "rejected", outcome, status)
end

return M
