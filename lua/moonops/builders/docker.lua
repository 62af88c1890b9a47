--- The docker backend: `docker build` and `docker push` through the Docker daemon.
-- docker reads $DOCKER_CONFIG itself; an insecure registry must be listed in the
-- daemon's `insecure-registries` (loopback registries are allowed by default).
local M = {
  name = "docker",
  executable = "docker",
  install = "install Docker Engine (docs.docker.com/engine/install) or apt-get install docker.io",
}

--- Whether the daemon answers: `GET /_ping` over $DOCKER_HOST's unix socket (default
-- /var/run/docker.sock). A tcp:// or ssh:// DOCKER_HOST is taken on trust. Used when
-- moonops picks a builder itself, so a docker CLI without a daemon is passed over.
-- Returns true, or false and why.
function M.available(_, env)
  local host = env and env.DOCKER_HOST or os.getenv("DOCKER_HOST")
  if host and host ~= "" and not host:match("^unix://") then return true end
  local socket = host and host:match("^unix://(.+)$") or "/var/run/docker.sock"
  local http = require "moonops.http"
  local res = http.request { url = "http://localhost/_ping", unix_socket = socket, timeout = 3, connect_timeout = 2 }
  if res and res.status == 200 then return true end
  return false, "no Docker daemon answers at " .. socket
end

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
