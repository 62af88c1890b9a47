--- Webhook providers: verify a delivery's signature over the raw body, then
-- normalise it into one event shape:
--   {provider, event, delivery, ref, after, deleted, repository, changes}
-- `changes` lists every ref the delivery touched ({ref, after, deleted}); the
-- top-level ref/after/deleted are its first entry.
--
-- A provider is a small table
--   {name, detect(headers) -> bool, verify(headers, body, secrets, opts) -> true | nil, reason,
--    parse(headers, body) -> event | nil, err}
-- and `webhook.register(provider)` adds one (plugins do this). Headers are the
-- server's lower-cased header table; secrets a list of strings.
local cjson = require "cjson"
local crypto = require "moonops.crypto"
local json = require "moonops.json"
local jsonscan = require "moonops.jsonscan"

local M = {}

local ZERO_SHA = string.rep("0", 40)

local providers = {} -- in detection order
local by_name = {}

local function hex_of_len(s, n)
  return #s == n and not s:find("[^%x]")
end

-- Keyed HMAC objects by algorithm and secret: the secret's key blocks are hashed once,
-- not on every delivery. Bounded, since secrets change on reload.
local keys, nkeys = { sha1 = {}, sha256 = {} }, 0
local function key_of(alg, secret)
  local k = keys[alg][secret]
  if not k then
    if nkeys >= 64 then keys, nkeys = { sha1 = {}, sha256 = {} }, 0 end
    k = crypto.hmac_key(alg, secret)
    keys[alg][secret], nkeys = k, nkeys + 1
  end
  return k
end

--- Check an HMAC hex signature against every secret (rotation). `given` is the
-- hex the sender put in `header`; `alg` sha256 or sha1. Returns true or nil, reason.
function M.check_hmac(alg, header, given, body, secrets)
  local ok = false
  for _, secret in ipairs(secrets) do
    if key_of(alg, secret):matches(body, given) then ok = true end
  end
  if ok then return true end
  if not hex_of_len(given, alg == "sha1" and 40 or 64) then return nil, "malformed " .. header end
  return nil, "invalid " .. header
end

--- Compare a shared token (GitLab) against every secret, in constant time
-- whatever the lengths (both sides are hashed first).
function M.check_token(header, given, secrets)
  local gd = crypto.digest("sha256", given)
  local ok = false
  for _, secret in ipairs(secrets) do
    if crypto.equal(crypto.digest("sha256", secret), gd) then ok = true end
  end
  if not ok then return nil, "invalid " .. header end
  return true
end

-- X-Hub-Signature-256: sha256=<hex>, or legacy X-Hub-Signature: sha1=<hex> when allowed.
-- `extra` lists bare-hex sha256 headers (X-Gitea-Signature, ...) checked first.
local function verify_hub(headers, body, secrets, opts, extra)
  if extra then
    for _, name in ipairs(extra) do
      local v = headers[name:lower()]
      if v then return M.check_hmac("sha256", name, v, body, secrets) end
    end
  end
  local v = headers["x-hub-signature-256"]
  if v then
    local hex = v:match("^sha256=(.*)$")
    if not hex then return nil, "malformed X-Hub-Signature-256" end
    return M.check_hmac("sha256", "X-Hub-Signature-256", hex, body, secrets)
  end
  v = headers["x-hub-signature"]
  if v then
    local hex = v:match("^sha256=(.*)$")
    if hex then return M.check_hmac("sha256", "X-Hub-Signature", hex, body, secrets) end
    hex = v:match("^sha1=(.*)$")
    if not hex then return nil, "malformed X-Hub-Signature" end
    if not (opts and opts.legacy_sha1) then return nil, "sha1 signature (X-Hub-Signature) not enabled" end
    return M.check_hmac("sha1", "X-Hub-Signature", hex, body, secrets)
  end
  local wanted = extra and extra[1] or "X-Hub-Signature-256"
  return nil, "missing " .. wanted
end

local function url_decode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- The JSON text of a delivery: the body itself, or the `payload` field of a
-- form-encoded body (GitHub's application/x-www-form-urlencoded content type).
function M.payload_text(headers, body)
  local ctype = (headers["content-type"] or ""):lower()
  if ctype:find("application/x-www-form-urlencoded", 1, true) then
    for pair in body:gmatch("[^&]+") do
      local k, v = pair:match("^([^=]*)=(.*)$")
      if k and url_decode(k) == "payload" then return url_decode(v) end
    end
    return nil, "form body without a payload field"
  end
  return body
end

local cjson_decode = cjson.decode

local function decode(headers, body)
  local text = body
  if headers["content-type"] ~= "application/json" then
    local err
    text, err = M.payload_text(headers, body)
    if not text then return nil, err end
  end
  -- cjson directly: only a few top-level strings are read, so moonops.json's
  -- array and integer restoration (a walk over the whole payload) is not needed.
  local ok, doc = pcall(cjson_decode, text)
  if not ok then return nil, "invalid JSON: " .. tostring(doc):gsub("^.-: ", "") end
  if type(doc) ~= "table" or json.is_array(doc) then return nil, "payload is not a JSON object" end
  return doc
end

local function str(v)
  return type(v) == "string" and v or nil
end

-- What a GitHub-like push is read for: jsonscan checks the whole text but builds only
-- these (a push payload is 7-30 kB; decoding all of it costs ten times more).
local PUSH_PATHS = { "ref", "after", "deleted", "repository.full_name", "project.path_with_namespace",
  "repository.clone_url", "repository.url", "repository.name" }

local function pick_push(headers, body)
  local text = body
  if headers["content-type"] ~= "application/json" then
    local err
    text, err = M.payload_text(headers, body)
    if not text then return nil, err end
  end
  local v, err = jsonscan.pick(text, PUSH_PATHS)
  if not v then return nil, err end
  return v
end

local function repo_name(doc)
  local r = type(doc.repository) == "table" and doc.repository or {}
  local p = type(doc.project) == "table" and doc.project or {}
  return str(r.full_name) or str(p.path_with_namespace) or str(r.clone_url) or str(r.url) or str(r.name)
end

local function finish(event, changes)
  event.changes = changes
  local first = changes[1] or {}
  event.ref, event.after, event.deleted = first.ref, first.after, first.deleted == true
  return event
end

-- GitHub, Gitea and Forgejo share the push payload: ref, after, deleted (GitHub).
local function parse_github_like(name, event_header, delivery_headers)
  return function(headers, body)
    local v, err = pick_push(headers, body)
    if not v then return nil, err end
    local delivery = headers[delivery_headers[1]]
    for i = 2, #delivery_headers do delivery = delivery or headers[delivery_headers[i]] end
    local repository = str(v["repository.full_name"]) or str(v["project.path_with_namespace"])
      or str(v["repository.clone_url"]) or str(v["repository.url"]) or str(v["repository.name"])
    local ref = v.ref
    if type(ref) ~= "string" then
      return { provider = name, event = headers[event_header] or "push", delivery = delivery,
        repository = repository, changes = {}, deleted = false }
    end
    local after = str(v.after)
    local deleted = v.deleted == true or after == ZERO_SHA
    return { provider = name, event = headers[event_header] or "push", delivery = delivery,
      repository = repository, ref = ref, after = after, deleted = deleted,
      changes = { { ref = ref, after = after, deleted = deleted } } }
  end
end

local function has(headers, a, b, c)
  return headers[a] ~= nil or (b ~= nil and headers[b] ~= nil) or (c ~= nil and headers[c] ~= nil)
end

local GITLAB_EVENTS = { ["Push Hook"] = "push", ["Tag Push Hook"] = "tag_push", ["System Hook"] = "system" }

local function bitbucket_changes(doc)
  local changes = {}
  if type(doc.push) == "table" and type(doc.push.changes) == "table" then -- Bitbucket Cloud
    for _, c in ipairs(doc.push.changes) do
      local new = type(c.new) == "table" and c.new or nil
      local old = type(c.old) == "table" and c.old or nil
      local side = new or old
      if side and (side.type == "branch" or side.type == "named_branch") and str(side.name) then
        local target = new and type(new.target) == "table" and new.target or {}
        changes[#changes + 1] = { ref = "refs/heads/" .. side.name,
          after = str(target.hash) or ZERO_SHA, deleted = new == nil or c.closed == true }
      end
    end
  elseif type(doc.changes) == "table" then -- Bitbucket Server / Data Center
    for _, c in ipairs(doc.changes) do
      local ref = str(c.refId) or (type(c.ref) == "table" and str(c.ref.id))
      if ref then
        changes[#changes + 1] = { ref = ref, after = str(c.toHash), deleted = c.type == "DELETE" }
      end
    end
  end
  return changes
end

local builtin = {
  {
    name = "gitlab",
    markers = { "x-gitlab-token", "x-gitlab-event" },
    detect = function(h) return has(h, "x-gitlab-token", "x-gitlab-event") end,
    verify = function(h, _, secrets)
      local token = h["x-gitlab-token"]
      if not token then return nil, "missing X-Gitlab-Token" end
      return M.check_token("X-Gitlab-Token", token, secrets)
    end,
    parse = function(h, body)
      local doc, err = decode(h, body)
      if not doc then return nil, err end
      local kind = h["x-gitlab-event"]
      local name = GITLAB_EVENTS[kind] or (kind and kind:lower():gsub(" hook$", ""):gsub("%s+", "_")) or "push"
      if name == "system" then name = str(doc.object_kind) or name end
      local event = { provider = "gitlab", event = name, repository = repo_name(doc),
        delivery = h["x-gitlab-event-uuid"] or h["x-gitlab-webhook-uuid"] }
      local changes = {}
      if str(doc.ref) then
        local after = str(doc.after)
        changes[1] = { ref = doc.ref, after = after, deleted = after == ZERO_SHA or doc.checkout_sha == json.null }
      end
      return finish(event, changes)
    end,
  },
  {
    name = "forgejo",
    markers = { "x-forgejo-event", "x-forgejo-signature", "x-forgejo-delivery" },
    detect = function(h) return has(h, "x-forgejo-event", "x-forgejo-signature", "x-forgejo-delivery") end,
    verify = function(h, body, secrets, opts)
      return verify_hub(h, body, secrets, opts, { "X-Forgejo-Signature", "X-Gitea-Signature" })
    end,
    parse = parse_github_like("forgejo", "x-forgejo-event", { "x-forgejo-delivery", "x-gitea-delivery" }),
  },
  {
    name = "gitea",
    markers = { "x-gitea-event", "x-gitea-signature", "x-gitea-delivery" },
    detect = function(h) return has(h, "x-gitea-event", "x-gitea-signature", "x-gitea-delivery") end,
    verify = function(h, body, secrets, opts)
      return verify_hub(h, body, secrets, opts, { "X-Gitea-Signature" })
    end,
    parse = parse_github_like("gitea", "x-gitea-event", { "x-gitea-delivery" }),
  },
  {
    name = "bitbucket",
    markers = { "x-event-key" },
    detect = function(h) return has(h, "x-event-key") end,
    verify = function(h, body, secrets, opts) return verify_hub(h, body, secrets, opts) end,
    parse = function(h, body)
      local doc, err = decode(h, body)
      if not doc then return nil, err end
      local key = h["x-event-key"] or ""
      local name = key
      if key == "repo:push" or key == "repo:refs_changed" then
        name = "push"
      elseif key == "diagnostics:ping" then
        name = "ping"
      end
      local event = { provider = "bitbucket", event = name, repository = repo_name(doc),
        delivery = h["x-request-uuid"] or h["x-request-id"] }
      return finish(event, bitbucket_changes(doc))
    end,
  },
  {
    name = "github",
    markers = { "x-github-event", "x-github-delivery" },
    detect = function(h) return has(h, "x-github-event", "x-github-delivery") end,
    verify = function(h, body, secrets, opts) return verify_hub(h, body, secrets, opts) end,
    parse = parse_github_like("github", "x-github-event", { "x-github-delivery" }),
  },
}

--- Add a provider (or replace the one of the same name). Providers added later
-- are detected first, so a plugin can claim deliveries a built-in would take.
function M.register(p)
  assert(type(p) == "table", "webhook.register: provider must be a table")
  assert(type(p.name) == "string" and p.name:match("^[%w_%-]+$"), "webhook.register: provider needs a name")
  for _, f in ipairs({ "detect", "verify", "parse" }) do
    assert(type(p[f]) == "function", "webhook.register: provider " .. p.name .. " needs " .. f .. "()")
  end
  for i, q in ipairs(providers) do
    if q.name == p.name then
      table.remove(providers, i)
      break
    end
  end
  table.insert(providers, 1, p)
  by_name[p.name] = p
  return p
end

-- The headers each built-in provider's detect looks for, checked by M.detect without a
-- call; a provider that replaces a built-in one is asked through its own detect.
local builtin_markers = {}
for _, p in ipairs(builtin) do
  builtin_markers[p], p.markers = p.markers, nil
end

for i = #builtin, 1, -1 do M.register(builtin[i]) end

--- The provider registered as `name`, or nil.
function M.provider(name)
  return by_name[name]
end

--- Names of every provider, in detection order.
function M.names()
  local out = {}
  for i, p in ipairs(providers) do out[i] = p.name end
  return out
end

--- The provider a delivery comes from; GitHub when nothing else matches (so an
-- unsigned request is told which header is missing).
function M.detect(headers)
  for i = 1, #providers do
    local p = providers[i]
    local markers = builtin_markers[p]
    if markers then -- a built-in provider: one of its headers is present
      for j = 1, #markers do
        if headers[markers[j]] ~= nil then return p end
      end
    elseif p.detect(headers) then
      return p
    end
  end
  return by_name.github
end

--- Verify and normalise one delivery.
-- opts: {provider = name (skip detection), legacy_sha1 = bool}
-- Returns event, or nil, http status, message: 401 for a missing or bad
-- signature (the message names the header, never a secret), 400 for a body
-- that does not parse after a valid signature.
function M.receive(headers, body, secrets, opts)
  opts = opts or {}
  local p = opts.provider and by_name[opts.provider] or M.detect(headers)
  if not p then return nil, 404, "unknown webhook provider " .. tostring(opts.provider) end
  if type(secrets) ~= "table" or #secrets == 0 then
    return nil, 401, "no webhook secret configured for this workspace"
  end
  local ok, why = p.verify(headers, body, secrets, opts)
  if not ok then return nil, 401, why or "invalid signature" end
  local event, err = p.parse(headers, body)
  if not event then return nil, 400, err or "malformed payload" end
  event.provider = event.provider or p.name
  event.changes = event.changes or {}
  return event
end

--- What to do with a verified event for a workspace deploying `branch`:
-- "deploy", change | "ping" | "ignore", reason.
local branch_refs = setmetatable({}, { __index = function(t, branch)
  local ref = "refs/heads/" .. branch
  t[branch] = ref
  return ref
end })
-- "ref X is not the deployed branch B" by X and B, so a stream of pushes to other
-- branches does not build the same string each time (bounded).
local other_ref, n_other = {}, 0
local function not_deployed(seen, branch)
  local by_branch = other_ref[branch]
  local reason = by_branch and by_branch[seen]
  if not reason then
    reason = "ref " .. seen .. " is not the deployed branch " .. branch
    if n_other >= 1024 then other_ref, n_other = {}, 0 end
    by_branch = other_ref[branch] or {}
    other_ref[branch], by_branch[seen], n_other = by_branch, reason, n_other + 1
  end
  return reason
end

function M.decide(event, branch)
  if event.event == "ping" then return "ping" end
  if event.event ~= "push" then return "ignore", "event " .. tostring(event.event) .. " is not a push" end
  local want = branch_refs[branch]
  local seen
  for _, c in ipairs(event.changes or {}) do
    if c.ref == want then
      if c.deleted then return "ignore", "branch " .. branch .. " was deleted" end
      return "deploy", c
    end
    seen = seen or c.ref
  end
  if not seen then return "ignore", "push without a ref" end
  return "ignore", not_deployed(seen, branch)
end

return M
