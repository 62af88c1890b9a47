--- The podman backend: `podman build` and `podman push` (daemonless, rootless where set up).
local M = {
  name = "podman",
  executable = "podman",
  install = "apt-get install podman (Debian, Ubuntu) or dnf install podman (Fedora)",
}

--- argv to build `o.dockerfile` in `o.context` tagged with every ref in `o.tags`.
function M.build_argv(o)
  local argv = { o.exe or "podman", "build", "-f", o.dockerfile }
  if o.authfile then
    argv[#argv + 1] = "--authfile"
    argv[#argv + 1] = o.authfile
  end
  for _, t in ipairs(o.tags) do
    argv[#argv + 1] = "-t"
    argv[#argv + 1] = t
  end
  argv[#argv + 1] = o.context
  return argv
end

--- argv to push `o.ref`; the pushed digest is written to `o.digestfile`.
function M.push_argv(o)
  local argv = { o.exe or "podman", "push" }
  if o.insecure then argv[#argv + 1] = "--tls-verify=false" end
  if o.authfile then
    argv[#argv + 1] = "--authfile"
    argv[#argv + 1] = o.authfile
  end
  argv[#argv + 1] = "--digestfile"
  argv[#argv + 1] = o.digestfile
  argv[#argv + 1] = o.ref
  return argv
end

return M
