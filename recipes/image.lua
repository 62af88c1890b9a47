-- recipes/image.lua: `moonops image` - build and push the pipelines image, skipping
-- the work when the registry already has the commit's image.
local errors = require "moonops.errors"
local fs = require "moonops.fs"
local image = require "moonops.image"

local function usage(msg) errors.raise(msg, errors.USAGE) end

-- Where the project is: a deployed workspace's current release, or a directory.
local function project(ctx, opts)
  if opts.project and opts.workspace then usage("use either --project or --workspace, not both") end
  if opts.workspace then
    local settings = require "moonops.settings"
    local workspace = require "moonops.workspace"
    local ws = settings.workspace(ctx.settings, opts.workspace)
    local dir, err = workspace.current_release(ctx.settings, ctx.store, ws)
    if not dir then errors.raise(err) end
    local state = workspace.state(ctx.store, ws)
    return {
      dir = dir,
      commit = state.current_commit,
      environment = opts.environment or workspace.active_environment(ctx.store, ws),
      workspace = ws.name,
      store = ctx.store,
      registry = opts.registry or ws.image.registry,
      builder = opts.builder or ws.image.builder,
      base = opts.base or ws.image.base,
    }
  end
  local dir = opts.project or "."
  local st = fs.stat(dir)
  if not st or st.type ~= "dir" then usage(string.format("--project %s: no such directory", dir)) end
  local p = { dir = dir, environment = opts.environment, registry = opts.registry, builder = opts.builder,
    base = opts.base }
  -- Record the run when a moonops.yml is in use.
  if fs.exists(ctx.config_path) then p.store = ctx.store end
  return p
end

-- Builder output: raw lines on stderr, or one line redrawn in place on a terminal.
local function output(ctx)
  if ctx.global.quiet then return nil, function() end end
  if not ctx.term.isatty(2) then
    return function(_, chunk) io.stderr:write(chunk) end, function() end
  end
  local width = math.max(20, (tonumber(os.getenv("COLUMNS")) or 100) - 12)
  local partial = ""
  local function show(line)
    line = line:gsub("%c", " "):gsub("%s+$", "")
    if line == "" then return end
    if #line > width then line = line:sub(1, width - 3) .. "..." end
    io.stderr:write("\r\27[K", ctx.term.paint("dim", "building ", 2), line)
    io.stderr:flush()
  end
  return function(_, chunk)
    partial = partial .. chunk:gsub("\r", "\n")
    local last
    for line in partial:gmatch("([^\n]*)\n") do
      if line:match("%S") then last = line end
    end
    partial = partial:match("[^\n]*$")
    if last then show(last) end
  end, function()
    io.stderr:write("\r\27[K")
    io.stderr:flush()
  end
end

return {
  summary = "Build and push the pipelines image; skip when the commit's image exists",
  usage = "(--workspace W | --project DIR) [options]",
  description = [[
The image is $MELTANO_DATAFLOW_DOCKERREGISTRY/<pipelines_image> (the legacy
$MATATIKA_DATAFLOW_DOCKERREGISTRY, or --registry), with pipelines_image read from
workspace.yml and workspace-<environment>.yml. It is tagged with the configured tag
(or latest) and sha-<commit12>. When the registry already has sha-<commit12>,
nothing is built and its digest is printed. A project without a Dockerfile gets the
documented one (FROM <base>, WORKDIR /workspace, COPY . ., RUN meltano install).
After the push the digest is read back from the registry and printed as
name@sha256:...]],
  options = {
    { "workspace", type = "string", metavar = "W", help = "a workspace from moonops.yml (its current release)" },
    { "project", type = "string", metavar = "DIR", help = "a Meltano project directory (default .)" },
    { "environment", type = "string", metavar = "E", help = "environment for workspace-<E>.yml" },
    { "builder", type = "string", metavar = "NAME", help = "docker, podman or buildah (default: the first found)" },
    { "registry", type = "string", metavar = "HOST", help = "registry (default $MELTANO_DATAFLOW_DOCKERREGISTRY)" },
    { "base", type = "string", metavar = "IMAGE", help = "base image of the generated Dockerfile (default "
      .. image.DEFAULT_BASE .. ")" },
    { "push", type = "boolean", default = true, help = "push to the registry (--no-push only builds)" },
    { "force", type = "boolean", help = "build and push even when the registry has the commit's image" },
    { "insecure-registry", type = "boolean", help = "allow plain http and unverified TLS for the registry" },
    { "json", type = "boolean", help = "print the outcome as JSON" },
  },
  examples = {
    "MELTANO_DATAFLOW_DOCKERREGISTRY=ghcr.io/my-org moonops image --project .",
    "moonops image --workspace my-workspace --builder buildah",
    "moonops image --project . --no-push --base python:3.11-slim",
  },
  run = function(ctx, opts)
    local p = project(ctx, opts)
    local on_output, done = output(ctx)
    p.push, p.force, p.insecure, p.on_output = opts.push, opts.force, opts["insecure-registry"], on_output
    local res, err, code = image.build(p)
    done()
    if not res then errors.raise(err, code) end
    if opts.json then
      ctx.print(ctx.json.pretty({ status = res.status, image = res.image, tags = res.tags,
        digest = res.digest or ctx.json.null, builder = res.builder or ctx.json.null, commit = res.commit }))
    elseif res.digest then
      ctx.print(res.image .. "@" .. res.digest .. "\n")
    else
      ctx.print(string.format("%s:%s built (not pushed)\n", res.image, res.tags[1]))
    end
    return 0
  end,
}
