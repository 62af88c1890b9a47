--- The pipelines image of a Meltano project: build it, push it, skip what the
-- registry already has (design §9).
--
--   $MELTANO_DATAFLOW_DOCKERREGISTRY / pipelines_image (workspace.yml overlays)
--     tagged <pipelines_image tag or latest> and sha-<commit12>
--
-- Builders are small backends (lua/moonops/builders/*.lua, or registered by plugins)
-- that turn a build or a push into an argv; this module runs them.
local errors = require "moonops.errors"
local fs = require "moonops.fs"
local json = require "moonops.json"
local log = require "moonops.log"
local proc = require "moonops.proc"
local registry = require "moonops.registry"

local M = {}

M.DEFAULT_BASE = "meltano/meltano:latest"
M.REGISTRY_ENV = { "MELTANO_DATAFLOW_DOCKERREGISTRY", "MATATIKA_DATAFLOW_DOCKERREGISTRY" }
M.LOG_TAIL = 15           -- lines of builder output quoted in a build error
M.LOG_KEEP = 1024 * 1024  -- bytes of builder output kept in the store

--- Builders tried in this order when none is named (plugins append theirs).
M.BUILDERS = { "docker", "podman", "buildah" }

local backends = {}

local function fail(msg, code) errors.raise(msg, code or errors.FAILURE) end

--- Register a builder backend: {executable=, install=, build_argv=fn(o), push_argv=fn(o),
-- pushed_digest=fn(output)?, available=fn(exe, env)?}. Plugins use
-- engine.register_image_builder, which this module also consults.
function M.register_builder(name, backend)
  assert(type(name) == "string" and name ~= "", "register_builder: a name is required")
  assert(type(backend) == "table" and type(backend.build_argv) == "function"
    and type(backend.push_argv) == "function", "register_builder: build_argv and push_argv are required")
  backend.name = backend.name or name
  backends[name] = backend
  for _, n in ipairs(M.BUILDERS) do
    if n == name then return end
  end
  M.BUILDERS[#M.BUILDERS + 1] = name
end

-- Builders registered by plugins (engine.register_image_builder), when plugins are loaded.
local function plugin_builders()
  local plugins = package.loaded["moonops.plugins"]
  return type(plugins) == "table" and type(plugins.registry) == "table" and plugins.registry.builders or {}
end

-- Every builder name, in the order they are tried.
local function builder_names()
  local names, seen = {}, {}
  for _, n in ipairs(M.BUILDERS) do
    names[#names + 1], seen[n] = n, true
  end
  local extra = {}
  for n in pairs(plugin_builders()) do
    if not seen[n] then extra[#extra + 1] = n end
  end
  table.sort(extra)
  for _, n in ipairs(extra) do names[#names + 1] = n end
  return names
end

--- The backend called `name`, or nil.
function M.backend(name)
  if backends[name] then return backends[name] end
  local from_plugin = plugin_builders()[name]
  if type(from_plugin) == "table" then
    from_plugin.name = from_plugin.name or name
    return from_plugin
  end
  if not tostring(name):match("^[%w_-]+$") then return nil end
  local ok, b = pcall(require, "moonops.builders." .. name)
  if ok and type(b) == "table" then
    backends[name] = b
    return b
  end
  return nil
end

--- The builder to use: `name`, or the first of M.BUILDERS found on PATH (and, for a
-- backend with `available`, ready: docker needs its daemon). Returns backend, executable
-- or nil, message. env overrides environment variables (PATH, DOCKER_HOST).
function M.find_builder(name, env)
  local path = env and env.PATH or nil
  if name then
    local b = M.backend(name)
    if not b then
      return nil, string.format("unknown builder %q (known: %s)", name, table.concat(builder_names(), ", "))
    end
    local exe = proc.which(b.executable or name, path)
    if not exe then
      return nil, string.format("builder %s: %s is not on PATH; to install it: %s", name, b.executable or name,
        b.install or "see its documentation")
    end
    return b, exe
  end
  local looked, hints = {}, {}
  for _, n in ipairs(builder_names()) do
    local b = M.backend(n)
    if b then
      local exe = proc.which(b.executable or n, path)
      local ok, why = exe ~= nil, nil
      if ok and b.available then ok, why = b.available(exe, env) end
      if ok then return b, exe end
      looked[#looked + 1] = (b.executable or n) .. (why and (" (found, but " .. why .. ")") or "")
      if b.install then hints[#hints + 1] = string.format("%s: %s", n, b.install) end
    end
  end
  return nil, string.format("no image builder found: looked for %s on PATH. Install one (buildah needs no daemon)"
    .. " and try again, or name one with --builder. %s", table.concat(looked, ", "), table.concat(hints, "; "))
end

--- The Dockerfile used when the project has none (the documented pattern).
function M.dockerfile(base)
  return table.concat({
    "FROM " .. (base or M.DEFAULT_BASE),
    "RUN mkdir workspace",
    "WORKDIR /workspace",
    "COPY . .",
    "RUN meltano install",
    "RUN rm -rf ~/.cache",
  }, "\n") .. "\n"
end

local function getter(env)
  return function(name)
    local v
    if env then v = env[name] end
    if v == nil then v = os.getenv(name) end
    if v == "" then v = nil end
    return v
  end
end

--- The registry to push to: `flag`, else $MELTANO_DATAFLOW_DOCKERREGISTRY, else the legacy
-- $MATATIKA_DATAFLOW_DOCKERREGISTRY. Returns value, where it came from (or nil).
function M.registry_setting(flag, env)
  if flag and flag ~= "" then return flag, "--registry" end
  local getenv = getter(env)
  for _, name in ipairs(M.REGISTRY_ENV) do
    local v = getenv(name)
    if v then return v, "$" .. name end
  end
  return nil
end

--- The image of the project in `dir` for `environment`: pipelines_image from workspace.yml
-- (and workspace-<environment>.yml over it) under the registry.
-- Returns {name=, tag=, registry=, repository=, pipelines_image=, registry_source=}; raises
-- a moonops error (code 2) when pipelines_image or the registry is missing.
function M.reference(dir, environment, opts)
  opts = opts or {}
  local meltano = require "moonops.meltano"
  local cfg, err = meltano.workspace_config(dir, environment)
  if not cfg then fail(err, errors.USAGE) end
  local where = environment and string.format("%s/workspace.yml (or workspace-%s.yml)", dir, environment)
    or dir .. "/workspace.yml"
  local image = cfg.pipelines_image
  if image == nil or image == json.null or image == "" then
    fail(string.format("pipelines_image is not set: add a line such as 'pipelines_image: my-org/pipelines' to %s",
      where), errors.USAGE)
  end
  if type(image) ~= "string" then
    fail(string.format("pipelines_image in %s must be a string such as my-org/pipelines[:tag]", where), errors.USAGE)
  end
  local reg, source = M.registry_setting(opts.registry, opts.env)
  local text = reg and (reg:gsub("^%a+://", ""):gsub("/+$", "") .. "/" .. image:gsub("^/+", "")) or image
  local ref, perr = registry.parse_reference(text)
  if not ref then fail(perr .. " (from pipelines_image in " .. where .. (reg and (" and " .. source) or "") .. ")",
    errors.USAGE) end
  if ref.digest then fail("pipelines_image must not pin a digest: " .. image, errors.USAGE) end
  local name = text:gsub("@.*$", "")
  if ref.tag then name = name:sub(1, #name - #ref.tag - 1) end
  if not reg and opts.push ~= false and not text:match("^[^/]*[.:][^/]*/") and not text:match("^localhost/") then
    fail(string.format("no registry to push %s to: set $%s (for example ghcr.io/my-org), pass --registry, or use "
      .. "--no-push", image, M.REGISTRY_ENV[1]), errors.USAGE)
  end
  return { name = name, tag = ref.tag or "latest", registry = ref.registry, repository = ref.repository,
    pipelines_image = image, registry_source = source }
end

--- The commit checked out in `dir` (or a directory above it). Returns sha, repo-is-clean
-- or nil, message.
function M.commit(dir)
  local git = require "moonops.git"
  local path = fs.realpath(dir) or dir
  while path and path ~= "" do
    local repo <close> = git.open(path)
    if repo then
      local head, herr = repo:head()
      if not head then return nil, herr end
      if head.unborn or not head.commit then
        return nil, string.format("%s has no commits yet: commit the project first (the image is tagged "
          .. "sha-<commit>)", path)
      end
      return head.commit, repo:is_clean { untracked = false }
    end
    if path == "/" then break end
    path = path:match("^(.*)/[^/]*$")
    if path == "" then path = "/" end
  end
  return nil, string.format("%s is not in a git repository: the image is tagged with the commit (sha-<commit12>)",
    dir)
end

-- Run argv, streaming output to on_output and into `journal`; returns the result or raises.
local function run(argv, journal, on_output, what)
  log.debug("running " .. table.concat(argv, " "))
  journal.add(string.format("$ %s\n", table.concat(argv, " ")))
  local res, err = proc.run { argv = argv, on_output = function(stream, chunk)
    journal.add(chunk)
    if on_output then on_output(stream, chunk) end
  end }
  if not res then fail(string.format("%s: %s", what, err)) end
  if res.code ~= 0 then
    fail(string.format("%s failed (%s exited with %d); its last output:\n%s", what, argv[1]:match("[^/]+$"),
      res.code, journal.tail(M.LOG_TAIL)))
  end
  return res
end

local function new_journal()
  local chunks, size = {}, 0
  local j = {}
  function j.add(s)
    chunks[#chunks + 1] = s
    size = size + #s
    while size > M.LOG_KEEP and #chunks > 1 do
      size = size - #chunks[1]
      table.remove(chunks, 1)
    end
  end
  function j.text() return log.mask(table.concat(chunks)) end
  function j.tail(n)
    local lines = {}
    for line in j.text():gsub("\r", "\n"):gmatch("[^\n]+") do
      if not line:match("^%s*$") then lines[#lines + 1] = line end
    end
    local from = math.max(1, #lines - n + 1)
    return "  " .. table.concat(lines, "\n  ", from)
  end
  return j
end

-- A temporary directory removed when the variable goes out of scope.
local function tempdir()
  local path = assert(fs.mkdtemp((os.getenv("TMPDIR") or "/tmp") .. "/moonops-image-"))
  return setmetatable({ path = path }, { __close = function(t) fs.remove_tree(t.path) end })
end

-- The digest the builder says it pushed (digest file, or parsed from its output).
local function pushed_digest(backend, digestfile, output)
  local text = digestfile and fs.read(digestfile)
  if text and text:match("sha256:%x+") then return text:match("sha256:%x+") end
  if backend.pushed_digest then return backend.pushed_digest(output) end
  return nil
end

local function record(opts, row)
  local db = opts.store
  if not db and opts.data_dir then
    local err
    db, err = require("moonops.db").open(opts.data_dir)
    if not db then
      log.warn("image: could not record the build: " .. tostring(err))
      return
    end
  end
  if not db then return end
  local now = require("moonops.db").now()
  db:exec([[INSERT INTO image_builds (workspace, commit_sha, image, tags, digest, builder, status, started_at,
    finished_at, error, log) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)]], row.workspace, row.commit, row.image,
    row.tags and json.encode(json.array(row.tags)) or nil, row.digest, row.builder, row.status, row.started_at,
    now, row.error, row.log)
  row.id = db:last_insert_id()
  if not opts.store then db:close() end
end

local function build(opts, row, journal)
  local dir = opts.dir or "."
  if not fs.exists(dir .. "/meltano.yml") and not fs.exists(dir .. "/workspace.yml") then
    fail(string.format("%s holds neither meltano.yml nor workspace.yml: point --project at a Meltano project", dir),
      errors.USAGE)
  end
  local push = opts.push ~= false
  local ref = M.reference(dir, opts.environment, { registry = opts.registry, env = opts.env, push = push })
  row.image = ref.name

  local commit, clean = opts.commit, true
  if not commit then
    commit, clean = M.commit(dir)
    if not commit then
      -- a deployed release is a plain export named <time>-<sha12>
      commit = (fs.realpath(dir) or dir):match("%-(%x%x%x%x%x%x%x%x%x%x%x%x)$")
      if not commit then fail(clean) end
      clean = true
    end
  end
  if not clean then
    log.warn(string.format("%s has uncommitted changes: the image tagged sha-%s includes them", dir, commit:sub(1, 12)))
  end
  row.commit = commit
  local sha_tag = "sha-" .. commit:sub(1, 12)
  local tags = { ref.tag }
  if ref.tag ~= sha_tag then tags[2] = sha_tag end
  row.tags = tags
  local result = { image = ref.name, tags = json.array(tags), commit = commit, digest = nil, builder = nil }

  local insecure = opts.insecure or registry.is_loopback(ref.registry)
  local client
  if push then
    client = registry.client(ref.registry, { insecure = opts.insecure, env = opts.env })
    if not opts.force then
      local m, err, code = client:manifest(ref.repository, sha_tag)
      if m then
        log.info(string.format("%s:%s is already in the registry: nothing to build (--force rebuilds)", ref.name,
          sha_tag))
        result.status, result.digest = "skipped", m.digest
        return result
      end
      if code ~= "not_found" then fail(err) end
    else
      local ok, err = client:ping()
      if not ok then fail(err) end
    end
  end

  local backend, exe = M.find_builder(opts.builder, opts.env)
  if not backend then fail(exe) end
  result.builder, row.builder = backend.name, backend.name

  local tmp <close> = tempdir()
  local dockerfile = dir .. "/Dockerfile"
  if fs.exists(dockerfile) then
    if opts.base then log.warn("--base is ignored: " .. dockerfile .. " is used as it is") end
  else
    dockerfile = tmp.path .. "/Dockerfile"
    assert(fs.write(dockerfile, M.dockerfile(opts.base)))
    log.info(string.format("no Dockerfile in %s: using the generated one (FROM %s)", dir,
      opts.base or M.DEFAULT_BASE))
  end

  local getenv = getter(opts.env)
  local authfile
  if getenv("DOCKER_CONFIG") and not getenv("REGISTRY_AUTH_FILE") and fs.exists(getenv("DOCKER_CONFIG") .. "/config.json") then
    authfile = getenv("DOCKER_CONFIG") .. "/config.json"
  end
  local refs = {}
  for i, t in ipairs(tags) do refs[i] = ref.name .. ":" .. t end
  local common = { exe = exe, env = { STORAGE_DRIVER = getenv("STORAGE_DRIVER") }, authfile = authfile,
    insecure = insecure }
  local function with(extra)
    local o = {}
    for k, v in pairs(common) do o[k] = v end
    for k, v in pairs(extra) do o[k] = v end
    return o
  end

  log.info(string.format("building %s with %s", table.concat(refs, ", "), backend.name))
  run(backend.build_argv(with { context = dir, dockerfile = dockerfile, tags = refs }), journal, opts.on_output,
    "build of " .. ref.name)
  if not push then
    result.status = "built"
    return result
  end

  -- The commit's tag goes last: the skip check trusts it, so it must exist only once
  -- everything else was pushed and verified (an interrupted run is redone by the next).
  -- Each tag is read back at once: its digest must be the one the builder pushed, and
  -- every tag must name the same manifest.
  local m
  for i, r in ipairs(refs) do
    log.info("pushing " .. r)
    local digestfile = tmp.path .. "/digest-" .. i
    local res = run(backend.push_argv(with { ref = r, digestfile = digestfile }), journal, opts.on_output,
      "push of " .. r)
    local pushed = pushed_digest(backend, digestfile, res.stdout .. res.stderr)
    local got, err = client:manifest(ref.repository, tags[i])
    if not got then fail("after the push: " .. err) end
    if pushed and pushed ~= got.digest then
      fail(string.format("digest mismatch: %s pushed %s as %s but the registry has %s", backend.name, r, pushed,
        got.digest))
    end
    if m and got.digest ~= m.digest then
      fail(string.format("digest mismatch: %s is %s but %s is %s", refs[1], m.digest, r, got.digest))
    end
    m = m or got
  end
  result.status, result.digest = "pushed", m.digest
  return result
end

--- Build (and push) the pipelines image of the project in opts.dir.
-- opts: {dir=, environment=, registry=, builder=, base=, push= (default true), force=,
--        insecure= (plain http / unverified TLS for the registry), commit= (default: git HEAD
--        of dir), workspace= (name recorded), store= | data_dir= (record the run),
--        on_output = fn(stream, chunk) (builder output as it comes), env = {} (overrides)}
-- Returns {status = "pushed"|"skipped"|"built", image=, tags=, digest=, builder=, commit=,
-- reference= (image@digest), log=} or nil, message, exit code.
function M.build(opts)
  opts = opts or {}
  local journal = new_journal()
  local row = { workspace = opts.workspace, started_at = require("moonops.db").now() }
  local ok, res = pcall(build, opts, row, journal)
  row.log = journal.text()
  if ok then
    res.reference = res.digest and (res.image .. "@" .. res.digest) or nil
    res.log = row.log
    row.status, row.digest, row.builder = res.status, res.digest, res.builder
    local rok, rerr = pcall(record, opts, row)
    if not rok then log.warn("image: could not record the build: " .. tostring(rerr)) end
    require("moonops.plugins").emit("image", { status = res.status, image = res.image, tags = res.tags,
      digest = res.digest, builder = res.builder, commit = res.commit, workspace = opts.workspace })
    return res
  end
  local message = errors.is(res) and res.message or tostring(res)
  local code = errors.is(res) and res.code or errors.FAILURE
  if code ~= errors.USAGE then
    row.status, row.error = "failed", log.mask(message)
    local rok, rerr = pcall(record, opts, row)
    if not rok then log.warn("image: could not record the build: " .. tostring(rerr)) end
  end
  if code ~= errors.USAGE then
    require("moonops.plugins").emit("image", { status = "failed", workspace = opts.workspace, error = log.mask(message) })
  end
  return nil, message, code
end

return M
