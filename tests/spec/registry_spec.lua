-- moonops.registry: references, challenges, credentials (pure), and the client against a
-- real docker-registry on loopback without auth, with Basic auth and with Bearer tokens.
local T = require "support.t"
local support = require "support.registry"
local registry = require "moonops.registry"
local json = require "moonops.json"
local log = require "moonops.log"

local SHA = string.rep("ab", 32)

describe("registry.parse_reference", function()
  local function ref(s)
    local r, err = registry.parse_reference(s)
    assert(r, err)
    return r
  end

  it("puts a bare name under library/ on Docker Hub", function()
    assert.same({ registry = "docker.io", repository = "library/busybox", name = "docker.io/library/busybox" },
      ref("busybox"))
    local r = ref("my-org/pipelines:v1.2")
    assert.equal("docker.io", r.registry)
    assert.equal("my-org/pipelines", r.repository)
    assert.equal("v1.2", r.tag)
  end)

  it("recognises a registry host by a dot, a port or localhost", function()
    local r = ref("ghcr.io/my-org/team/pipelines")
    assert.equal("ghcr.io", r.registry)
    assert.equal("my-org/team/pipelines", r.repository)
    assert.is_nil(r.tag)
    r = ref("localhost:5000/pipelines:sha-0123456789ab")
    assert.equal("localhost:5000", r.registry)
    assert.equal("pipelines", r.repository)
    assert.equal("sha-0123456789ab", r.tag)
    r = ref("localhost/pipelines")
    assert.equal("localhost", r.registry)
    r = ref("[::1]:5000/a/b")
    assert.equal("[::1]:5000", r.registry)
  end)

  it("separates a tag from a port and keeps a digest", function()
    local r = ref("127.0.0.1:5000/org/img:latest@sha256:" .. SHA)
    assert.equal("127.0.0.1:5000", r.registry)
    assert.equal("org/img", r.repository)
    assert.equal("latest", r.tag)
    assert.equal("sha256:" .. SHA, r.digest)
    assert.equal("127.0.0.1:5000/org/img:latest@sha256:" .. SHA, registry.format_reference(r))
    r = ref("127.0.0.1:5000/org/img@sha256:" .. SHA)
    assert.is_nil(r.tag)
  end)

  it("accepts the separators of the distribution grammar", function()
    assert.equal("org/a.b_c__d---e", ref("org/a.b_c__d---e").repository)
    -- a first component with a dot is a host, and hosts have no underscores
    assert.is_nil((registry.parse_reference("a.b_c/f")))
  end)

  it("rejects what docker rejects, saying why", function()
    for _, bad in ipairs { "", "a b", "img:", "img:-x", "img:.x", "Img", "a//b", "a/", "/a", "img@sha256:abc",
      "img@sha256:" .. SHA:upper(), "localhost:port/x", "a/-b", "a/b_", "a/b.", "a/b___c", "x:" .. string.rep("t", 129) } do
      local r, err = registry.parse_reference(bad)
      assert.is_nil(r, bad)
      assert.is_string(err)
    end
    local _, err = registry.parse_reference("org/Pipelines")
    assert.matches('invalid image reference "org/Pipelines"', err, 1, true)
  end)

  it("knows loopback registries", function()
    assert.is_true(registry.is_loopback("127.0.0.1:5000"))
    assert.is_true(registry.is_loopback("127.1.2.3"))
    assert.is_true(registry.is_loopback("localhost:5000"))
    assert.is_true(registry.is_loopback("[::1]:5000"))
    assert.is_false(registry.is_loopback("ghcr.io"))
    assert.is_false(registry.is_loopback("127.0.0.1.example.com"))
  end)
end)

describe("registry.parse_challenges", function()
  it("reads a Bearer challenge with quoted values holding commas and spaces", function()
    local list = assert(registry.parse_challenges(
      'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        .. 'scope="repository:org/a:pull,push repository:org/b:pull"'))
    assert.equal(1, #list)
    assert.equal("bearer", list[1].scheme)
    assert.same({ realm = "https://auth.example.com/token", service = "registry.example.com",
      scope = "repository:org/a:pull,push repository:org/b:pull" }, list[1].params)
    assert.same({ "repository:org/a:pull,push", "repository:org/b:pull" }, registry.scopes(list[1]))
  end)

  it("joins repeated scope parameters", function()
    local list = assert(registry.parse_challenges('Bearer realm="r", scope="repository:a:pull", scope="repository:b:push"'))
    assert.same({ "repository:a:pull", "repository:b:push" }, registry.scopes(list[1]))
  end)

  it("reads several challenges, case-insensitive names, token values and escapes", function()
    local list = assert(registry.parse_challenges(
      'BASIC Realm="Registry \\"Realm\\", EU" , Bearer realm=https://t.example/token,error=invalid_token, Negotiate'))
    assert.equal(3, #list)
    assert.equal("basic", list[1].scheme)
    assert.equal('Registry "Realm", EU', list[1].params.realm)
    assert.equal("bearer", list[2].scheme)
    assert.equal("https://t.example/token", list[2].params.realm)
    assert.equal("invalid_token", list[2].params.error)
    assert.equal("negotiate", list[3].scheme)
    assert.same({}, list[3].params)
  end)

  it("reads token68 credentials after a scheme", function()
    local list = assert(registry.parse_challenges("Negotiate a87421000492aa874209af8bc028==, Basic realm=x"))
    assert.equal("a87421000492aa874209af8bc028==", list[1].token68)
    assert.equal("x", list[2].params.realm)
  end)

  it("reports what it cannot parse", function()
    for _, bad in ipairs { "", 'Bearer realm="unterminated', 'Bearer realm="x", scope=', 'Bearer realm="a" service="b"',
      "Bearer ,=x" } do
      local list, err = registry.parse_challenges(bad)
      assert.is_nil(list, bad)
      assert.is_string(err)
    end
    assert.is_nil((registry.parse_challenges(nil)))
  end)
end)

describe("registry.credentials", function()
  local dir, env

  before_each(function()
    dir = T.tmpdir()
    env = { HOME = dir .. "/home", DOCKER_CONFIG = false, XDG_RUNTIME_DIR = false, REGISTRY_AUTH_FILE = false,
      PATH = dir .. "/bin:" .. os.getenv("PATH") }
  end)
  after_each(function() T.cleanup() end)

  local function b64(s) return require("moonops.crypto").base64(s) end

  it("reads base64 auth from ~/.docker/config.json, matching keys written as URLs", function()
    T.write(dir .. "/home/.docker/config.json", json.encode { auths = {
      ["https://reg.example.com:5000/v1/"] = { auth = b64("bot:pa:ss") },
      ["other.example.com"] = { auth = b64("x:y") } } })
    local c = assert(registry.credentials("reg.example.com:5000", { env = env }))
    assert.equal("bot", c.username)
    assert.equal("pa:ss", c.password)
    assert.equal(dir .. "/home/.docker/config.json", c.source)
    assert.is_false(registry.credentials("third.example.com", { env = env }))
    assert.equal("has ***", log.mask("has pa:ss"))
  end)

  it("prefers $DOCKER_CONFIG and reads identity tokens", function()
    env.DOCKER_CONFIG = dir .. "/dc"
    T.write(dir .. "/dc/config.json", json.encode { auths = { ["reg.example.com"] = {
      auth = b64("bot:"), identitytoken = "refresh-123" } } })
    T.write(dir .. "/home/.docker/config.json", json.encode { auths = { ["reg.example.com"] = { auth = b64("no:no") } } })
    local c = assert(registry.credentials("reg.example.com", { env = env }))
    assert.equal("refresh-123", c.identity_token)
    assert.equal("bot", c.username)
  end)

  it("maps Docker Hub's names to its index key", function()
    T.write(dir .. "/home/.docker/config.json", json.encode { auths = {
      ["https://index.docker.io/v1/"] = { auth = b64("hubuser:hubpass") } } })
    assert.equal("hubuser", assert(registry.credentials("docker.io", { env = env })).username)
  end)

  it("runs credHelpers and credsStore helpers with the server on stdin", function()
    T.write(dir .. "/bin/docker-credential-fake", table.concat({
      "#!/bin/sh",
      "read server",
      'echo "$1 $server" >> ' .. T.q(dir .. "/helper.log"),
      'case "$server" in',
      '  reg.example.com) echo \'{"ServerURL":"reg.example.com","Username":"helped","Secret":"from-helper"}\' ;;',
      '  token.example.com) echo \'{"ServerURL":"token.example.com","Username":"<token>","Secret":"idtok"}\' ;;',
      "  *) echo 'credentials not found in native keychain'; exit 1 ;;",
      "esac",
    }, "\n") .. "\n")
    os.execute("chmod +x " .. T.q(dir .. "/bin/docker-credential-fake"))
    T.write(dir .. "/home/.docker/config.json", json.encode {
      credHelpers = { ["reg.example.com"] = "fake" }, credsStore = "fake",
      auths = { ["reg.example.com"] = {}, ["plain.example.com"] = { auth = b64("p:q") } } })
    local c = assert(registry.credentials("reg.example.com", { env = env }))
    assert.same({ username = "helped", password = "from-helper", source = "docker-credential-fake" }, c)
    c = assert(registry.credentials("token.example.com", { env = env }))
    assert.equal("idtok", c.identity_token)
    -- the store knows nothing of plain.example.com: the file's own entry is used
    assert.equal("p", assert(registry.credentials("plain.example.com", { env = env })).username)
    assert.is_false(registry.credentials("none.example.com", { env = env }))
    assert.equal("get reg.example.com\nget token.example.com\nget plain.example.com\nget none.example.com\n",
      T.read(dir .. "/helper.log"))
  end)

  it("falls back to podman's auth.json", function()
    env.XDG_RUNTIME_DIR = dir .. "/run"
    T.write(dir .. "/run/containers/auth.json", json.encode { auths = { ["quay.io"] = { auth = b64("pod:man") } } })
    local c = assert(registry.credentials("quay.io", { env = env }))
    assert.equal("pod", c.username)
    env.REGISTRY_AUTH_FILE = dir .. "/explicit.json"
    T.write(env.REGISTRY_AUTH_FILE, json.encode { auths = { ["quay.io"] = { auth = b64("explicit:x") } } })
    assert.equal("explicit", assert(registry.credentials("quay.io", { env = env })).username)
  end)

  it("reports a broken file and a missing helper, never the secrets", function()
    T.write(dir .. "/home/.docker/config.json", "{ not json")
    local c, err = registry.credentials("reg.example.com", { env = env })
    assert.is_nil(c)
    assert.matches("config.json", err, 1, true)
    T.write(dir .. "/home/.docker/config.json", json.encode { credsStore = "absent",
      auths = { ["reg.example.com"] = { auth = b64("u:topsecret") } } })
    c, err = registry.credentials("reg.example.com", { env = env })
    assert.is_nil(c)
    assert.matches("docker-credential-absent", err, 1, true)
    assert.not_matches("topsecret", err)
    T.write(dir .. "/home/.docker/config.json", json.encode { auths = { ["reg.example.com"] = { auth = "!!!" } } })
    c, err = registry.credentials("reg.example.com", { env = env })
    assert.is_nil(c)
    assert.matches("base64", err)
  end)
end)

describe("registry client", function()
  local CONFIG = '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'

  -- Push a one-config image as repo:tag through the API; returns its digest.
  local function push_image(client, repo, tag)
    local cfg = assert(client:put_blob(repo, CONFIG))
    local manifest = json.encode { schemaVersion = 2, mediaType = "application/vnd.oci.image.manifest.v1+json",
      config = { mediaType = "application/vnd.oci.image.config.v1+json", digest = cfg, size = #CONFIG },
      layers = json.array {} }
    return assert(client:put_manifest(repo, tag, manifest))
  end

  after_each(function() T.cleanup() end)

  describe("without auth", function()
    local reg
    setup(function() reg = support.start("none") end)
    teardown(function() reg:stop() end)

    it("pings, misses, pushes and finds a manifest", function()
      local c = registry.client(reg.host, { credentials = false })
      assert.is_true(c:ping())
      local m, err, code = c:manifest("org/app", "sha-0123456789ab")
      assert.is_nil(m)
      assert.equal("not_found", code)
      assert.matches("has no manifest org/app:sha%-0123456789ab", err)
      local digest = push_image(c, "org/app", "v1")
      m = assert(c:manifest("org/app", "v1"))
      assert.equal(digest, m.digest)
      assert.equal("application/vnd.oci.image.manifest.v1+json", m.media_type)
      local g = assert(c:manifest("org/app", digest, { method = "GET" }))
      assert.equal(digest, g.digest)
      assert.equal(2, json.decode(g.body).schemaVersion)
      assert.equal("http", c.scheme)
    end)

    it("says when the registry is unreachable", function()
      local port = T.free_port()
      local c = registry.client("127.0.0.1:" .. port, { credentials = false })
      local ok, err = c:ping()
      assert.is_nil(ok)
      assert.matches("registry 127.0.0.1:" .. port .. " is unreachable", err, 1, true)
    end)
  end)

  describe("over https", function()
    local reg
    setup(function() reg = support.start("none", { tls = true }) end)
    teardown(function() reg:stop() end)

    it("moves from http to https on a loopback registry that speaks TLS", function()
      local c = registry.client(reg.host, { credentials = false, cainfo = reg.ca })
      assert.is_true(c:ping())
      assert.equal("https", c.scheme)
    end)

    it("verifies the certificate unless the registry is insecure", function()
      local c = registry.client(reg.host, { credentials = false, cainfo = "/etc/ssl/certs/ca-certificates.crt" })
      local ok, err = c:ping()
      assert.is_nil(ok)
      assert.matches("unreachable", err)
      c = registry.client(reg.host, { credentials = false, insecure = true })
      assert.is_true(c:ping())
    end)
  end)

  describe("with Basic auth", function()
    local reg
    setup(function() reg = support.start("basic", { user = "bot", password = "s3cret pass" }) end)
    teardown(function() reg:stop() end)

    it("answers the challenge with the credentials from config.json", function()
      local home = T.tmpdir()
      reg:docker_config(home)
      local c = registry.client(reg.host, { env = { DOCKER_CONFIG = home } })
      assert.is_true(c:ping())
      push_image(c, "org/app", "v1")
      assert.is_table(c:manifest("org/app", "v1"))
    end)

    it("refuses wrong credentials without printing them", function()
      local c = registry.client(reg.host, { credentials = { username = "bot", password = "wrong-password-x" } })
      local ok, err, code = c:ping()
      assert.is_nil(ok)
      assert.equal("auth", code)
      assert.matches('authentication failed as "bot"', err, 1, true)
      assert.not_matches("wrong%-password%-x", err)
    end)

    it("says where it looked when there are no credentials", function()
      local empty = T.tmpdir()
      local c = registry.client(reg.host, { env = { DOCKER_CONFIG = empty, XDG_RUNTIME_DIR = false,
        REGISTRY_AUTH_FILE = false } })
      local ok, err = c:ping()
      assert.is_nil(ok)
      assert.matches("requires a login", err)
      assert.matches(empty .. "/config.json", err, 1, true)
    end)
  end)

  describe("with Bearer tokens", function()
    local reg
    setup(function()
      reg = support.start("bearer", { user = "bot", password = "tok-pass", identity_token = "refresh-me" })
    end)
    teardown(function() reg:stop() end)

    it("exchanges credentials for a token with the challenge's service and scopes, and reuses it", function()
      local c = registry.client(reg.host, { credentials = { username = "bot", password = "tok-pass" } })
      local before = #reg:token_requests()
      local digest = push_image(c, "org/app", "v1")
      assert.equal(digest, assert(c:manifest("org/app", "v1")).digest)
      assert.equal(digest, assert(c:manifest("org/app", "v1")).digest)
      local reqs = reg:token_requests()
      local scopes = {}
      for i = before + 1, #reqs do
        assert.is_true(reqs[i].ok)
        assert.equal("moonops-test", reqs[i].service)
        assert.equal("bot", reqs[i].user)
        scopes[#scopes + 1] = table.concat(reqs[i].scopes, " ")
      end
      -- one token for the push (pull and push scopes), one for reading; the second read reuses it
      assert.same({ "repository:org/app:pull repository:org/app:push", "repository:org/app:pull" }, scopes)
    end)

    it("uses an identity token with the OAuth refresh-token grant", function()
      local c = registry.client(reg.host, { credentials = { identity_token = "refresh-me" } })
      assert.is_true(c:ping())
      local last = reg:token_requests()[#reg:token_requests()]
      assert.equal("POST", last.method)
      assert.equal("refresh_token", last.grant_type)
    end)

    it("fails clearly when the token endpoint refuses the credentials", function()
      local c = registry.client(reg.host, { credentials = { username = "bot", password = "bad-pass-y" } })
      local m, err, code = c:manifest("org/app", "v1")
      assert.is_nil(m)
      assert.equal("auth", code)
      assert.matches("authentication failed", err)
      assert.matches("401", err)
      assert.not_matches("bad%-pass%-y", err)
    end)
  end)
end)
