--- The docker backend: `docker build` and `docker push` through the Docker daemon.
-- docker reads $DOCKER_CONFIG itself; an insecure registry must be listed in the
-- daemon's `insecure-registries` (loopback registries are allowed by default).
local M = {
  name = "docker",
  executable = "docker",
  install = "install Docker Engine (docs.docker.com/engine/install) or apt-get install docker.io",
}

--- argv to build `o.dockerfile` in `o.context` tagged with every ref in `o.tags`.
function M.build_argv(o)
  local argv = { o.exe or "docker", "build", "-f", o.dockerfile }
  for _, t in ipairs(o.tags) do
    argv[#argv + 1] = "-t"
    argv[#argv + 1] = t
  end
  argv[#argv + 1] = o.context
  return argv
end

--- argv to push `o.ref`; docker prints the digest ("<tag>: digest: sha256:... size: N").
function M.push_argv(o)
  return { o.exe or "docker", "push", o.ref }
end

--- The digest in `docker push` output, if any.
function M.pushed_digest(output)
  local digest
  for d in output:gmatch("digest: (sha256:%x+)") do digest = d end
  return digest
end

return M
