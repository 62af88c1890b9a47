--- The buildah backend: builds without a daemon (chroot isolation), vfs storage by default.
-- `$STORAGE_DRIVER` picks another storage driver (overlay where the kernel allows it).
local M = {
  name = "buildah",
  executable = "buildah",
  install = "apt-get install buildah (Debian, Ubuntu) or dnf install buildah (Fedora)",
}

local function storage(o)
  local driver = o.env and o.env.STORAGE_DRIVER
  if not driver or driver == "" then driver = "vfs" end
  return { o.exe or "buildah", "--storage-driver", driver }
end

--- argv to build `o.dockerfile` in `o.context` tagged with every ref in `o.tags`.
function M.build_argv(o)
  local argv = storage(o)
  for _, a in ipairs { "bud", "--isolation", "chroot", "-f", o.dockerfile } do argv[#argv + 1] = a end
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
  local argv = storage(o)
  argv[#argv + 1] = "push"
  if o.insecure then argv[#argv + 1] = "--tls-verify=false" end
  if o.authfile then
    argv[#argv + 1] = "--authfile"
    argv[#argv + 1] = o.authfile
  end
  argv[#argv + 1] = "--digestfile"
  argv[#argv + 1] = o.digestfile
  argv[#argv + 1] = o.ref
  argv[#argv + 1] = "docker://" .. o.ref
  return argv
end

return M
