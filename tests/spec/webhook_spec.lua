-- Webhook deliveries: signatures over the raw body, every provider normalised
-- into one event shape, and the deploy / ping / ignore decision.
local T = require "support.t"
local crypto = require "moonops.crypto"
local json = require "moonops.json"
local webhook = require "moonops.webhook"

local SECRET = "s3cret-for-tests"

local function push_body(ref, after, extra)
  local doc = { ref = ref or "refs/heads/main", after = after or string.rep("a", 40),
    before = string.rep("0", 40), repository = { full_name = "org/ws" } }
  for k, v in pairs(extra or {}) do doc[k] = v end
  return json.encode(doc)
end

local function github_headers(body, secret, event)
  return {
    ["content-type"] = "application/json",
    ["x-github-event"] = event or "push",
    ["x-github-delivery"] = "d-1",
    ["x-hub-signature-256"] = "sha256=" .. crypto.hmac("sha256", secret or SECRET, body),
  }
end

-- HMAC computed by openssl, independently of moonops.crypto.
local function openssl_hmac(alg, secret, body)
  local dir = T.tmpdir()
  T.write(dir .. "/body", body)
  local out = T.sh(string.format("openssl dgst -%s -hmac %s -r %s", alg, T.q(secret), T.q(dir .. "/body")))
  return assert(out:match("^(%x+)"))
end

describe("webhook signatures", function()
  after_each(T.cleanup)

  it("matches GitHub's published test vector", function()
    local body = "Hello, World!"
    local secret = "It's a Secret to Everybody"
    local expected = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert.equal(expected, crypto.hmac("sha256", secret, body))
    assert.is_true(webhook.check_hmac("sha256", "X-Hub-Signature-256", expected, body, { secret }))
    assert.equal(expected, openssl_hmac("sha256", secret, body))
  end)

  it("accepts a push signed with openssl", function()
    local body = push_body()
    local h = github_headers(body)
    h["x-hub-signature-256"] = "sha256=" .. openssl_hmac("sha256", SECRET, body)
    local ev = assert(webhook.receive(h, body, { SECRET }))
    assert.same({ "github", "push", "d-1", "refs/heads/main", string.rep("a", 40), false, "org/ws" },
      { ev.provider, ev.event, ev.delivery, ev.ref, ev.after, ev.deleted, ev.repository })
  end)

  it("accepts upper-case hex", function()
    local body = push_body()
    local h = github_headers(body)
    h["x-hub-signature-256"] = h["x-hub-signature-256"]:upper():gsub("^SHA256=", "sha256=")
    assert.truthy(webhook.receive(h, body, { SECRET }))
  end)

  it("tries every configured secret (rotation)", function()
    local body = push_body()
    local h = github_headers(body, "the-new-secret")
    assert.truthy(webhook.receive(h, body, { "the-old-secret", "the-new-secret" }))
    assert.falsy(webhook.receive(h, body, { "the-old-secret", "another-one" }))
  end)

  it("refuses a wrong secret with 401 naming the header, never the expected value", function()
    local body = push_body()
    local h = github_headers(body, "wrong-secret")
    local ev, status, msg = webhook.receive(h, body, { SECRET })
    assert.is_nil(ev)
    assert.equal(401, status)
    assert.equal("invalid X-Hub-Signature-256", msg)
    assert.falsy(msg:find(crypto.hmac("sha256", SECRET, body), 1, true))
    assert.falsy(msg:find(SECRET, 1, true))
  end)

  it("refuses a signature made for a different body", function()
    local body = push_body()
    local h = github_headers(push_body("refs/heads/other"))
    local _, status, msg = webhook.receive(h, body, { SECRET })
    assert.equal(401, status)
    assert.equal("invalid X-Hub-Signature-256", msg)
  end)

  it("refuses a missing signature header", function()
    local body = push_body()
    local h = github_headers(body)
    h["x-hub-signature-256"] = nil
    local _, status, msg = webhook.receive(h, body, { SECRET })
    assert.equal(401, status)
    assert.equal("missing X-Hub-Signature-256", msg)
  end)

  it("refuses signatures of the wrong length or with non-hex characters", function()
    local body = push_body()
    local good = crypto.hmac("sha256", SECRET, body)
    for _, bad in ipairs({ good:sub(1, 63), good .. "0", good:sub(1, 63) .. "g", "", "sha256=" .. good }) do
      local h = github_headers(body)
      h["x-hub-signature-256"] = "sha256=" .. bad
      local _, status, msg = webhook.receive(h, body, { SECRET })
      assert.equal(401, status)
      assert.equal("malformed X-Hub-Signature-256", msg)
    end
    local h = github_headers(body)
    h["x-hub-signature-256"] = good -- no "sha256=" prefix
    local _, status, msg = webhook.receive(h, body, { SECRET })
    assert.equal(401, status)
    assert.equal("malformed X-Hub-Signature-256", msg)
  end)

  it("refuses sha1 signatures unless legacy_sha1 is configured", function()
    local body = push_body()
    local h = github_headers(body)
    h["x-hub-signature-256"] = nil
    h["x-hub-signature"] = "sha1=" .. openssl_hmac("sha1", SECRET, body)
    local ev, status, msg = webhook.receive(h, body, { SECRET })
    assert.is_nil(ev)
    assert.equal(401, status)
    assert.matches("X%-Hub%-Signature", msg)
    assert.truthy(webhook.receive(h, body, { SECRET }, { legacy_sha1 = true }))
    h["x-hub-signature"] = "sha1=" .. crypto.hmac("sha1", "wrong", body)
    assert.falsy(webhook.receive(h, body, { SECRET }, { legacy_sha1 = true }))
  end)

  it("refuses every delivery when the workspace has no secret", function()
    local body = push_body()
    local _, status = webhook.receive(github_headers(body), body, {})
    assert.equal(401, status)
  end)

  it("verifies before parsing: malformed JSON is 400 only with a valid signature", function()
    local body = "{not json"
    local _, status = webhook.receive(github_headers(body), body, { SECRET })
    assert.equal(400, status)
    _, status = webhook.receive(github_headers(body, "other"), body, { SECRET })
    assert.equal(401, status)
    local arr = "[1,2]"
    _, status = webhook.receive(github_headers(arr), arr, { SECRET })
    assert.equal(400, status)
    -- the whole text is checked, also what is not read: a broken value deep inside,
    -- text after the object, a number JSON does not allow
    for _, bad in ipairs({ '{"ref":"refs/heads/main","commits":[{"id":1,}]}', '{"ref":"refs/heads/main"} x',
      '{"ref":"refs/heads/main","size":01}' }) do
      local ev, st, msg = webhook.receive(github_headers(bad), bad, { SECRET })
      assert.is_nil(ev)
      assert.equal(400, st)
      assert.matches("^invalid JSON: .* at byte %d+$", msg)
    end
  end)

  it("reads a full-size GitHub push payload: ref, after, deleted and the repository name", function()
    local commits = {}
    for i = 1, 60 do
      commits[i] = string.format('{"id":"%040d","message":"change %d \\u00e9\\n","added":[],"removed":[],' ..
        '"modified":["meltano.yml"],"author":{"name":"Dev","email":"dev@example.com"}}', i, i)
    end
    local body = '{"ref":"refs/heads/main","before":"' .. string.rep("0", 40) .. '","after":"' .. string.rep("c", 40) ..
      '","created":false,"deleted":false,"forced":false,"repository":{"id":1,"name":"ws","full_name":"org/ws",' ..
      '"private":true,"owner":{"login":"org"},"topics":["a","b"],"clone_url":"https://example.com/org/ws.git"},' ..
      '"commits":[' .. table.concat(commits, ",") .. '],"head_commit":' .. commits[60] ..
      ',"pusher":{"name":"dev"},"sender":{"login":"dev","id":7}}'
    assert.is_true(#body > 10000)
    local ev = assert(webhook.receive(github_headers(body), body, { SECRET }))
    assert.equal("refs/heads/main", ev.ref)
    assert.equal(string.rep("c", 40), ev.after)
    assert.is_false(ev.deleted)
    assert.equal("org/ws", ev.repository)
    assert.same({ { ref = "refs/heads/main", after = string.rep("c", 40), deleted = false } }, ev.changes)
  end)
end)

describe("webhook providers", function()
  after_each(T.cleanup)

  it("reads GitHub's form-encoded payload= bodies, signed over the form", function()
    local doc = push_body("refs/heads/main", string.rep("b", 40))
    local body = "payload=" .. doc:gsub("[^%w]", function(c) return string.format("%%%02X", c:byte()) end)
    local h = github_headers(body)
    h["content-type"] = "application/x-www-form-urlencoded"
    local ev = assert(webhook.receive(h, body, { SECRET }))
    assert.equal(string.rep("b", 40), ev.after)
    assert.equal("refs/heads/main", ev.ref)
    local _, status = webhook.receive(github_headers("foo=bar"), "foo=bar", { SECRET })
    assert.equal(400, status) -- json content-type, not JSON
    h = github_headers("foo=bar")
    h["content-type"] = "application/x-www-form-urlencoded"
    _, status = webhook.receive(h, "foo=bar", { SECRET })
    assert.equal(400, status)
  end)

  it("normalises a GitHub ping and a deleted branch", function()
    local ping = json.encode({ zen = "Keep it logically awesome.", hook_id = 1 })
    local ev = assert(webhook.receive(github_headers(ping, nil, "ping"), ping, { SECRET }))
    assert.equal("ping", ev.event)
    assert.equal("ping", (webhook.decide(ev, "main")))
    local del = push_body("refs/heads/main", string.rep("0", 40), { deleted = true })
    ev = assert(webhook.receive(github_headers(del), del, { SECRET }))
    assert.is_true(ev.deleted)
  end)

  it("verifies Gitea's bare-hex X-Gitea-Signature", function()
    local body = push_body()
    local h = { ["content-type"] = "application/json", ["x-gitea-event"] = "push", ["x-gitea-delivery"] = "g-1",
      ["x-gitea-signature"] = openssl_hmac("sha256", SECRET, body) }
    local ev = assert(webhook.receive(h, body, { SECRET }))
    assert.same({ "gitea", "push", "g-1" }, { ev.provider, ev.event, ev.delivery })
    h["x-gitea-signature"] = crypto.hmac("sha256", "nope", body)
    local _, status, msg = webhook.receive(h, body, { SECRET })
    assert.equal(401, status)
    assert.equal("invalid X-Gitea-Signature", msg)
    h["x-gitea-signature"] = nil
    _, status, msg = webhook.receive(h, body, { SECRET })
    assert.equal(401, status)
    assert.equal("missing X-Gitea-Signature", msg)
  end)

  it("verifies Forgejo's X-Forgejo-Signature and reads X-Forgejo-Delivery", function()
    local body = push_body("refs/heads/dev")
    local h = { ["x-forgejo-event"] = "push", ["x-forgejo-delivery"] = "f-9", ["x-gitea-event"] = "push",
      ["x-forgejo-signature"] = crypto.hmac("sha256", SECRET, body) }
    local ev = assert(webhook.receive(h, body, { SECRET }))
    assert.same({ "forgejo", "f-9", "refs/heads/dev" }, { ev.provider, ev.delivery, ev.ref })
    h["x-forgejo-signature"] = crypto.hmac("sha256", SECRET, body .. " ")
    assert.falsy(webhook.receive(h, body, { SECRET }))
  end)

  it("compares GitLab's X-Gitlab-Token and reads its push and tag events", function()
    local body = json.encode({ object_kind = "push", ref = "refs/heads/main", after = string.rep("c", 40),
      checkout_sha = string.rep("c", 40), project = { path_with_namespace = "grp/ws" } })
    local h = { ["x-gitlab-event"] = "Push Hook", ["x-gitlab-token"] = SECRET, ["x-gitlab-event-uuid"] = "u-1" }
    local ev = assert(webhook.receive(h, body, { "other", SECRET }))
    assert.same({ "gitlab", "push", "u-1", "grp/ws", false }, { ev.provider, ev.event, ev.delivery, ev.repository, ev.deleted })
    h["x-gitlab-token"] = SECRET .. "x"
    local _, status, msg = webhook.receive(h, body, { SECRET })
    assert.equal(401, status)
    assert.equal("invalid X-Gitlab-Token", msg)
    h["x-gitlab-token"] = nil
    _, status, msg = webhook.receive(h, body, { SECRET }, { provider = "gitlab" })
    assert.equal(401, status)
    assert.equal("missing X-Gitlab-Token", msg)
    h["x-gitlab-token"], h["x-gitlab-event"] = SECRET, "Tag Push Hook"
    ev = assert(webhook.receive(h, body, { SECRET }))
    assert.equal("tag_push", ev.event)
    assert.equal("ignore", (webhook.decide(ev, "main")))
  end)

  it("reads a GitLab branch deletion", function()
    local body = json.encode({ object_kind = "push", ref = "refs/heads/main", after = string.rep("0", 40),
      checkout_sha = json.null })
    local ev = assert(webhook.receive({ ["x-gitlab-event"] = "Push Hook", ["x-gitlab-token"] = SECRET }, body, { SECRET }))
    local action, reason = webhook.decide(ev, "main")
    assert.equal("ignore", action)
    assert.equal("branch main was deleted", reason)
  end)

  it("verifies Bitbucket Cloud and Server deliveries", function()
    local cloud = json.encode({ repository = { full_name = "team/ws" }, push = { changes = {
      { new = { type = "branch", name = "feature", target = { hash = string.rep("1", 40) } } },
      { new = { type = "branch", name = "main", target = { hash = string.rep("2", 40) } } },
    } } })
    local h = { ["x-event-key"] = "repo:push", ["x-request-uuid"] = "bb-1",
      ["x-hub-signature"] = "sha256=" .. openssl_hmac("sha256", SECRET, cloud) }
    local ev = assert(webhook.receive(h, cloud, { SECRET }))
    assert.same({ "bitbucket", "push", "bb-1", "team/ws" }, { ev.provider, ev.event, ev.delivery, ev.repository })
    local action, change = webhook.decide(ev, "main")
    assert.equal("deploy", action)
    assert.equal(string.rep("2", 40), change.after)

    local server = json.encode({ changes = { { refId = "refs/heads/main", toHash = string.rep("3", 40), type = "DELETE" } } })
    h = { ["x-event-key"] = "repo:refs_changed", ["x-request-id"] = "bb-2",
      ["x-hub-signature"] = "sha256=" .. crypto.hmac("sha256", SECRET, server) }
    ev = assert(webhook.receive(h, server, { SECRET }))
    assert.equal("bb-2", ev.delivery)
    assert.is_true(ev.deleted)
    h["x-hub-signature"] = "sha256=" .. crypto.hmac("sha256", "bad", server)
    assert.falsy(webhook.receive(h, server, { SECRET }))
  end)

  it("lets a plugin register its own provider, detected first", function()
    local p = webhook.register({
      name = "acme",
      detect = function(h) return h["x-acme"] ~= nil end,
      verify = function(h, _, secrets) return webhook.check_token("X-Acme", h["x-acme"], secrets) end,
      parse = function(h) return { event = "push", delivery = h["x-acme-id"], changes = {
        { ref = "refs/heads/main", after = string.rep("9", 40) } } } end,
    })
    assert.equal(p, webhook.provider("acme"))
    assert.equal("acme", webhook.names()[1])
    local ev = assert(webhook.receive({ ["x-acme"] = SECRET, ["x-acme-id"] = "a1", ["x-github-event"] = "push" }, "", { SECRET }))
    assert.equal("acme", ev.provider)
    assert.has_error(function() webhook.register({ name = "broken" }) end)
  end)
end)

describe("webhook decisions", function()
  local function ev(event, ref, deleted)
    return { event = event, changes = ref and { { ref = ref, after = string.rep("a", 40), deleted = deleted } } or {} }
  end

  it("deploys a push to the branch", function()
    local action, change = webhook.decide(ev("push", "refs/heads/main"), "main")
    assert.equal("deploy", action)
    assert.equal("refs/heads/main", change.ref)
  end)

  it("ignores other branches, tags, deletions and other events with a reason", function()
    local cases = {
      { ev("push", "refs/heads/dev"), "ref refs/heads/dev is not the deployed branch main" },
      { ev("push", "refs/tags/v1"), "ref refs/tags/v1 is not the deployed branch main" },
      { ev("push", "refs/heads/main", true), "branch main was deleted" },
      { ev("issues"), "event issues is not a push" },
      { ev("push"), "push without a ref" },
    }
    for _, c in ipairs(cases) do
      local action, reason = webhook.decide(c[1], "main")
      assert.equal("ignore", action)
      assert.equal(c[2], reason)
    end
  end)
end)
