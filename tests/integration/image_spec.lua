-- `moonops image` end to end: buildah really builds a workspace image (from a base image
-- built here out of busybox-static, nothing downloaded) and pushes it to a real
-- docker-registry with Basic auth; skopeo and umoci check what arrived. The docker and
-- podman backends run against a fake `docker`/`podman` on PATH that records its argv
-- (no Docker engine runs here) and pushes a small image through the registry API.
local T = require "support.t"
local support = require "support.registry"
local json = require "moonops.json"
local store = require "moonops.store"

local USER, PASSWORD = "ci-bot", "pa55 word!"
local BASE = "localhost/moonops-test-base"

local FAKE_BUILDER = [[#!/bin/sh
name=$(basename "$0")
{ echo "$name"; for a in "$@"; do echo "$a"; done; echo "--"; } >> "$FAKE_LOG"
case "$1" in
  build)
    prev=""
    for a in "$@"; do [ "$prev" = "-f" ] && cp "$a" "$FAKE_LOG.Dockerfile"; prev="$a"; done
    echo "Step 1/6 : FROM base"
    if [ -n "$FAKE_FAIL" ]; then echo "step 5: $FAKE_FAIL" >&2; exit 2; fi
    echo "Successfully built" ;;
  push)
    ref=""; digestfile=""; prev=""
    for a in "$@"; do [ "$prev" = "--digestfile" ] && digestfile="$a"; prev="$a"; ref="$a"; done
    digest=$("$MOONOPS_BIN" lua "$FAKE_PUSH" "$ref") || exit 1
    [ -n "$FAKE_WRONG_DIGEST" ] && digest="sha256:$(printf '%064d' 0)"
    [ -n "$digestfile" ] && printf '%s' "$digest" > "$digestfile"
    echo "${ref##*:}: digest: $digest size: 321" ;;
esac
]]

-- What the fake builder pushes: a one-config image, through moonops.registry.
local FAKE_PUSH = [[
local registry = require "moonops.registry"
local json = require "moonops.json"
local r = assert(registry.parse_reference(arg[1]))
local c = registry.client(r.registry)
local config = json.encode { architecture = "amd64", os = "linux", config = { Labels = { repo = r.repository } },
  rootfs = { type = "layers", diff_ids = json.array {} } }
local digest = assert(c:put_blob(r.repository, config))
io.write(assert(c:put_manifest(r.repository, r.tag, json.encode { schemaVersion = 2,
  mediaType = "application/vnd.oci.image.manifest.v1+json", layers = json.array {},
  config = { mediaType = "application/vnd.oci.image.config.v1+json", digest = digest, size = #config } })))
]]

describe("moonops image", function()
  local D, reg, env, project, commit

  local function sh(cmd)
    local out, ok = T.sh("CONTAINERS_STORAGE_CONF=" .. T.q(D .. "/storage.conf") .. " " .. cmd .. " 2>&1")
    assert(ok, cmd .. " failed:\n" .. out)
    return out
  end

  local function image(args, extra)
    local e = {}
    for k, v in pairs(env) do e[k] = v end
    for k, v in pairs(extra or {}) do e[k] = v end
    return T.moonops(args, { env = e })
  end

  -- A committed Meltano project; returns its directory and commit.
  local function make_project(name, files)
    local dir = D .. "/" .. name
    T.write(dir .. "/meltano.yml", "version: 1\ndefault_environment: dev\nproject_id: p\nenvironments:\n"
      .. "- name: dev\n- name: prod\n")
    for path, text in pairs(files) do T.write(dir .. "/" .. path, text) end
    sh(string.format("cd %s && git init -q -b main && git add -A && git -c user.name=t -c user.email=t@e commit -qm init",
      T.q(dir)))
    return dir, (T.sh("git -C " .. T.q(dir) .. " rev-parse HEAD"):gsub("%s+$", ""))
  end

  local function rows()
    local db <close> = assert(store.open(D .. "/data/moonops.db"))
    return db:rows("SELECT * FROM image_builds ORDER BY id")
  end

  local function skopeo(args)
    return sh("skopeo " .. args .. " --tls-verify=false --creds " .. T.q(USER .. ":" .. PASSWORD))
  end

  setup(function()
    D = T.sh("mktemp -d /tmp/moonops-image.XXXXXX"):gsub("%s+$", "")
    T.write(D .. "/storage.conf", string.format('[storage]\ndriver = "vfs"\nrunroot = "%s/containers/run"\n'
      .. 'graphroot = "%s/containers/graph"\n', D, D))
    -- the base image: busybox and a stand-in `meltano` that leaves a mark when it runs
    T.write(D .. "/base/Dockerfile", "FROM scratch\nCOPY busybox /bin/busybox\n"
      .. 'RUN ["/bin/busybox", "--install", "-s", "/bin"]\nCOPY meltano /bin/meltano\n')
    T.write(D .. "/base/meltano", "#!/bin/sh\necho \"meltano $*\"\nmkdir -p .meltano\necho installed > .meltano/installed\n")
    sh("cp /bin/busybox " .. T.q(D .. "/base/busybox") .. " && chmod +x " .. T.q(D .. "/base/meltano"))
    sh("buildah --storage-driver vfs bud --isolation chroot -q -t " .. BASE .. " " .. T.q(D .. "/base"))

    reg = support.start("basic", { user = USER, password = PASSWORD })
    T.write(D .. "/moonops.yml", "data_dir: " .. D .. "/data\n")
    reg:docker_config(D .. "/docker")
    T.write(D .. "/docker-wrong/config.json", json.encode { auths = { [reg.host] = {
      auth = require("moonops.crypto").base64(USER .. ":not-the-password") } } })
    T.write(D .. "/fakebin/docker", FAKE_BUILDER)
    T.write(D .. "/fakebin/podman", FAKE_BUILDER)
    T.write(D .. "/fake_push.lua", FAKE_PUSH)
    sh("chmod +x " .. T.q(D .. "/fakebin/docker") .. " " .. T.q(D .. "/fakebin/podman"))
    env = {
      MELTANO_DATAFLOW_DOCKERREGISTRY = reg.host,
      MATATIKA_DATAFLOW_DOCKERREGISTRY = false,
      DOCKER_CONFIG = D .. "/docker",
      REGISTRY_AUTH_FILE = false,
      CONTAINERS_STORAGE_CONF = D .. "/storage.conf",
      MOONOPS_CONFIG = D .. "/moonops.yml",
      MOONOPS_BIN = T.bin,
      FAKE_LOG = D .. "/fake.log",
      FAKE_PUSH = D .. "/fake_push.lua",
      NO_COLOR = "1",
    }
    project, commit = make_project("project", {
      ["workspace.yml"] = "pipelines_image: org/pipelines\n",
      ["workspace-prod.yml"] = "pipelines_image: org/prod-pipelines:stable\n",
      ["extract/accounts.csv"] = "id,name\n1,alpha\n",
    })
  end)

  teardown(function()
    if reg then reg:stop() end
    if D then os.execute("rm -rf " .. T.q(D)) end
    T.cleanup()
  end)

  before_each(function() os.remove(D .. "/fake.log") end)

  local function fake_calls()
    local calls, cur = {}, nil
    for line in (T.read(D .. "/fake.log") or ""):gmatch("([^\n]*)\n") do
      if line == "--" then
        calls[#calls + 1] = cur
        cur = nil
      elseif not cur then
        cur = { line }
      else
        cur[#cur + 1] = line
      end
    end
    return calls
  end

  describe("with buildah", function()
    it("builds the generated Dockerfile, pushes both tags and prints name@digest", function()
      local res = image({ "image", "--project", project, "--builder", "buildah", "--base", BASE })
      assert.equal(0, res.code, res.stderr)
      local name = reg.host .. "/org/pipelines"
      local digest = res.stdout:match("^" .. name:gsub("%p", "%%%0") .. "@(sha256:%x+)\n$")
      assert(digest, "stdout: " .. res.stdout)
      assert.matches("RUN meltano install", res.stderr, 1, true) -- the build output was streamed

      -- the registry, asked independently, has both tags at that digest
      local sha_tag = "sha-" .. commit:sub(1, 12)
      assert.equal(digest, json.decode(skopeo("inspect docker://" .. name .. ":" .. sha_tag)).Digest)
      assert.equal(digest, json.decode(skopeo("inspect docker://" .. name .. ":latest")).Digest)
      local config = json.decode(skopeo("inspect --config docker://" .. name .. ":" .. sha_tag))
      assert.equal("/workspace", config.config.WorkingDir)

      -- and its filesystem has the workspace, with what `RUN meltano install` left
      sh("skopeo copy --src-tls-verify=false --src-creds " .. T.q(USER .. ":" .. PASSWORD) .. " docker://" .. name
        .. ":" .. sha_tag .. " oci:" .. D .. "/oci:pipelines")
      sh("umoci unpack --rootless --image " .. T.q(D .. "/oci:pipelines") .. " " .. T.q(D .. "/bundle"))
      local root = D .. "/bundle/rootfs/workspace/"
      assert.equal("id,name\n1,alpha\n", T.read(root .. "extract/accounts.csv"))
      assert.is_string(T.read(root .. "meltano.yml"))
      assert.equal("installed\n", T.read(root .. ".meltano/installed"))

      local r = rows()
      local last = r[#r]
      assert.equal("pushed", last.status)
      assert.equal(digest, last.digest)
      assert.equal("buildah", last.builder)
      assert.equal(commit, last.commit_sha)
      assert.same({ "latest", sha_tag }, json.decode(last.tags))
      assert.matches("STEP 5/6: RUN meltano install", last.log, 1, true)
    end)

    it("skips the build when the registry has the commit's image", function()
      local res = image({ "image", "--project", project, "--json" }, { PATH = D .. "/no-builders" })
      assert.equal(0, res.code, res.stderr)
      local out = json.decode(res.stdout)
      assert.equal("skipped", out.status)
      assert.equal(reg.host .. "/org/pipelines", out.image)
      assert.same({ "latest", "sha-" .. commit:sub(1, 12) }, out.tags)
      assert.equal(json.decode(skopeo("inspect docker://" .. out.image .. ":latest")).Digest, out.digest)
      assert.equal(json.null, out.builder)
      assert.matches("already in the registry", res.stderr)
      assert.equal("skipped", rows()[#rows()].status)
    end)

    it("fails a broken build with the builder's last lines and records it as failed", function()
      local dir = make_project("broken", {
        ["workspace.yml"] = "pipelines_image: org/broken\n",
        ["Dockerfile"] = "FROM " .. BASE .. "\nRUN echo compiling && echo 'boom: no such dependency' >&2 && exit 3\n",
      })
      local before = #rows()
      local res = image({ "image", "--project", dir, "--builder", "buildah" })
      assert.equal(1, res.code)
      assert.matches("build of " .. reg.host .. "/org/broken failed", res.stderr, 1, true)
      assert.matches("boom: no such dependency", res.stderr, 1, true)
      assert.equal("", res.stdout)
      local r = rows()
      assert.equal(before + 1, #r)
      assert.equal("failed", r[#r].status)
      assert.is_nil(r[#r].digest)
      local _, ok = T.sh("skopeo inspect --tls-verify=false --creds " .. T.q(USER .. ":" .. PASSWORD)
        .. " docker://" .. reg.host .. "/org/broken:latest >/dev/null 2>&1")
      assert.is_false(ok)
    end)
  end)

  describe("with docker and podman (fake executables recording their argv)", function()
    local fakepath

    setup(function() fakepath = D .. "/fakebin:" .. os.getenv("PATH") end)

    it("runs docker build and docker push with the exact arguments", function()
      local res = image({ "image", "--project", project, "--environment", "prod", "--builder", "docker",
        "--base", "python:3.11-slim" }, { PATH = fakepath })
      assert.equal(0, res.code, res.stderr)
      local name = reg.host .. "/org/prod-pipelines"
      local sha = name .. ":sha-" .. commit:sub(1, 12)
      local calls = fake_calls()
      assert.equal(3, #calls)
      local dockerfile = calls[1][4]
      assert.same({ "docker", "build", "-f", dockerfile, "-t", name .. ":stable", "-t", sha, project }, calls[1])
      assert.same({ "docker", "push", name .. ":stable" }, calls[2])
      assert.same({ "docker", "push", sha }, calls[3]) -- the commit's tag last
      assert.equal("FROM python:3.11-slim\nRUN mkdir workspace\nWORKDIR /workspace\nCOPY . .\n"
        .. "RUN meltano install\nRUN rm -rf ~/.cache\n", T.read(D .. "/fake.log.Dockerfile"))
      assert.is_nil(T.read(dockerfile)) -- the generated Dockerfile is cleaned up
      local digest = json.decode(skopeo("inspect docker://" .. sha)).Digest
      assert.equal(name .. "@" .. digest .. "\n", res.stdout)
    end)

    it("runs podman with --digestfile, --tls-verify=false for a loopback registry and the docker config", function()
      local res = image({ "image", "--project", project, "--environment", "prod", "--builder", "podman", "--force",
        "--json" }, { PATH = fakepath })
      assert.equal(0, res.code, res.stderr)
      local out = json.decode(res.stdout)
      assert.equal("pushed", out.status)
      assert.equal("podman", out.builder)
      local name = reg.host .. "/org/prod-pipelines"
      local sha = name .. ":sha-" .. commit:sub(1, 12)
      local authfile = D .. "/docker/config.json"
      local calls = fake_calls()
      assert.equal(3, #calls)
      assert.same({ "podman", "build", "-f", calls[1][4], "--authfile", authfile, "-t", name .. ":stable", "-t", sha,
        project }, calls[1])
      assert.same({ "podman", "push", "--tls-verify=false", "--authfile", authfile, "--digestfile", calls[2][7],
        name .. ":stable" }, calls[2])
      assert.same({ "podman", "push", "--tls-verify=false", "--authfile", authfile, "--digestfile", calls[3][7], sha },
        calls[3])
      assert.matches("FROM meltano/meltano:latest\n", T.read(D .. "/fake.log.Dockerfile"), 1, true)
    end)

    it("takes the first builder found: docker, then podman, then buildah", function()
      os.execute("mkdir -p " .. T.q(D .. "/only-podman") .. " && ln -sf " .. T.q(D .. "/fakebin/podman") .. " "
        .. T.q(D .. "/only-podman/podman"))
      local res = image({ "image", "--project", project, "--no-push" }, { PATH = D .. "/only-podman:/usr/bin:/bin" })
      assert.equal(0, res.code, res.stderr)
      assert.equal("podman", fake_calls()[1][1])
      assert.equal(reg.host .. "/org/pipelines:latest built (not pushed)\n", res.stdout)
    end)

    it("passes over a docker CLI whose daemon does not answer", function()
      local res = image({ "image", "--project", project, "--no-push" },
        { PATH = D .. "/fakebin:/usr/bin:/bin", DOCKER_HOST = "unix://" .. D .. "/no-daemon.sock" })
      assert.equal(0, res.code, res.stderr)
      assert.equal("podman", fake_calls()[1][1])
      os.execute("rm -rf " .. T.q(D .. "/docker-only") .. " && mkdir -p " .. T.q(D .. "/docker-only")
        .. " && ln -s " .. T.q(D .. "/fakebin/docker") .. " " .. T.q(D .. "/docker-only/docker"))
      res = image({ "image", "--project", project, "--no-push" },
        { PATH = D .. "/docker-only", DOCKER_HOST = "unix://" .. D .. "/no-daemon.sock" })
      assert.equal(1, res.code)
      assert.matches("looked for docker (found, but no Docker daemon answers at " .. D .. "/no-daemon.sock), podman, "
        .. "buildah", res.stderr, 1, true)
    end)

    it("uses the legacy registry variable and lets --registry win", function()
      local res = image({ "image", "--project", project, "--builder", "docker", "--no-push" },
        { PATH = fakepath, MELTANO_DATAFLOW_DOCKERREGISTRY = false,
          MATATIKA_DATAFLOW_DOCKERREGISTRY = "legacy.example.com/team" })
      assert.equal(0, res.code, res.stderr)
      assert.equal("legacy.example.com/team/org/pipelines:latest", fake_calls()[1][6])
      res = image({ "image", "--project", project, "--builder", "docker", "--no-push", "--registry", "flag.example.com:5000" },
        { PATH = fakepath })
      assert.equal(0, res.code, res.stderr)
      assert.equal("flag.example.com:5000/org/pipelines:latest", fake_calls()[2][6])
    end)

    it("refuses a digest that does not match what the registry has, recording no success", function()
      local dir, mismatch_commit = make_project("mismatch", { ["workspace.yml"] = "pipelines_image: org/mismatch\n" })
      local res = image({ "image", "--project", dir, "--builder", "docker" }, { PATH = fakepath, FAKE_WRONG_DIGEST = "1" })
      assert.equal(1, res.code)
      assert.matches("digest mismatch: docker pushed " .. reg.host .. "/org/mismatch:latest as sha256:0000", res.stderr,
        1, true)
      assert.equal("", res.stdout)
      -- the commit's tag was never pushed, so the next run does not skip
      local _, found = T.sh("skopeo inspect --tls-verify=false --creds " .. T.q(USER .. ":" .. PASSWORD)
        .. " docker://" .. reg.host .. "/org/mismatch:sha-" .. mismatch_commit:sub(1, 12) .. " >/dev/null 2>&1")
      assert.is_false(found)
      local r = rows()
      assert.equal("failed", r[#r].status)
      assert.is_nil(r[#r].digest)
    end)
  end)

  describe("a deployed workspace", function()
    local config

    setup(function()
      config = D .. "/workspaces.yml"
      T.write(config, string.format([[
data_dir: %s/ws-data
workspaces:
  - id: 0b7c4f7e-5d1a-4c1e-9a55-3f7f5b0c2d11
    name: analytics
    repository: %s
    branch: main
    environment: prod
    secret_env: ANALYTICS_SECRET
  - id: 6a0e2f43-8c3b-4f4e-b0f1-2a9d8c7e6b55
    name: analytics-auto
    repository: %s
    branch: main
    secret_env: ANALYTICS_SECRET
    image: { build_on_deploy: true, builder: docker }
]], D, project, project))
    end)

    -- For the sanitizer build: libgit2 1.5 leaks pcre2 match data in git_remote_lookup
    -- (the fetch of `moonops deploy`, which is only the setup here); the short stacks of
    -- the sanitizer name only libpcre2.
    local function deploy_env(e)
      T.write(D .. "/lsan.supp", "leak:libpcre2-8.so\n")
      e.LSAN_OPTIONS = "suppressions=" .. D .. "/lsan.supp:print_suppressions=0"
      return e
    end

    it("builds the current release of --workspace W with its active environment", function()
      local e = deploy_env { PATH = D .. "/fakebin:" .. os.getenv("PATH"), ANALYTICS_SECRET = "deploy-secret",
        MOONOPS_CONFIG = config }
      local res = image({ "deploy", "analytics" }, e)
      assert.equal(0, res.code, res.stderr)
      res = image({ "image", "--workspace", "analytics", "--builder", "docker", "--force" }, e)
      assert.equal(0, res.code, res.stderr)
      local build = fake_calls()[1]
      local context = build[#build]
      assert.matches("/ws%-data/workspaces/analytics/releases/[^/]+%-" .. commit:sub(1, 12) .. "$", context)
      assert.equal(reg.host .. "/org/prod-pipelines:stable", build[6]) -- workspace-prod.yml
      local db <close> = assert(store.open(D .. "/ws-data/moonops.db"))
      local row = db:one("SELECT * FROM image_builds ORDER BY id DESC LIMIT 1")
      assert.equal("analytics", row.workspace)
      assert.equal(commit, row.commit_sha)
      assert.equal("pushed", row.status)
    end)

    it("runs after a deployment when the workspace asks for build_on_deploy", function()
      local res = image({ "deploy", "analytics-auto" }, deploy_env { PATH = D .. "/fakebin:" .. os.getenv("PATH"),
        ANALYTICS_SECRET = "deploy-secret", MOONOPS_CONFIG = config })
      assert.equal(0, res.code, res.stderr)
      -- the commit's image is in the registry already (built with buildah above)
      assert.matches("image: skipped " .. reg.host .. "/org/pipelines@sha256:", res.stdout .. res.stderr, 1, true)
      assert.same({}, fake_calls())
    end)
  end)

  describe("bad input", function()
    it("says which builders were looked for and how to install one", function()
      local res = image({ "image", "--project", project, "--no-push" }, { PATH = D .. "/no-builders" })
      assert.equal(1, res.code)
      assert.matches("no image builder found: looked for docker, podman, buildah on PATH", res.stderr, 1, true)
      assert.matches("apt-get install buildah", res.stderr, 1, true)
      res = image({ "image", "--project", project, "--no-push", "--builder", "kaniko" })
      assert.equal(1, res.code)
      assert.matches('unknown builder "kaniko"', res.stderr, 1, true)
    end)

    it("says where to set pipelines_image when it is missing", function()
      local dir = make_project("noimage", { ["workspace.yml"] = "other: 1\n" })
      local res = image({ "image", "--project", dir })
      assert.equal(2, res.code)
      assert.matches("pipelines_image is not set: add a line such as 'pipelines_image: my-org/pipelines' to "
        .. dir .. "/workspace.yml", res.stderr, 1, true)
    end)

    it("needs a registry to push to", function()
      local res = image({ "image", "--project", project }, { MELTANO_DATAFLOW_DOCKERREGISTRY = false })
      assert.equal(2, res.code)
      assert.matches("set $MELTANO_DATAFLOW_DOCKERREGISTRY", res.stderr, 1, true)
    end)

    it("reports an unreachable registry before building", function()
      local port = T.free_port()
      local res = image({ "image", "--project", project, "--builder", "docker" },
        { MELTANO_DATAFLOW_DOCKERREGISTRY = "127.0.0.1:" .. port, PATH = D .. "/fakebin:" .. os.getenv("PATH") })
      assert.equal(1, res.code)
      assert.matches("registry 127.0.0.1:" .. port .. " is unreachable", res.stderr, 1, true)
      assert.same({}, fake_calls())
    end)

    it("refuses wrong credentials without printing them", function()
      local res = image({ "image", "--project", project, "--force", "--builder", "docker" },
        { DOCKER_CONFIG = D .. "/docker-wrong", PATH = D .. "/fakebin:" .. os.getenv("PATH") })
      assert.equal(1, res.code)
      assert.matches('authentication failed as "' .. USER .. '"', res.stderr, 1, true)
      assert.not_matches("not%-the%-password", res.stderr)
      assert.same({}, fake_calls())
    end)

    it("needs a git commit to tag the image", function()
      local dir = D .. "/not-git"
      T.write(dir .. "/meltano.yml", "version: 1\n")
      T.write(dir .. "/workspace.yml", "pipelines_image: org/x\n")
      local res = image({ "image", "--project", dir, "--no-push" })
      assert.equal(1, res.code)
      assert.matches("not in a git repository", res.stderr)
    end)
  end)
end)
