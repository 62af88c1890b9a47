--- User-facing errors with an exit code. Raised with errors.raise, caught by moonops.cli.
local M = {}

local mt = {
  __name = "moonops.error",
  __tostring = function(e) return e.message end,
}

M.USAGE, M.FAILURE, M.CONFLICT, M.BUSY = 2, 1, 3, 4

--- A new error object (not raised).
function M.new(message, code, extra)
  local e = extra or {}
  e.message, e.code = tostring(message), code or M.FAILURE
  return setmetatable(e, mt)
end

--- Raise a one-line user error with exit code `code` (default 1).
function M.raise(message, code, extra)
  error(M.new(message, code, extra), 0)
end

function M.is(e)
  return getmetatable(e) == mt
end

--- assert-like: return v when truthy, else raise msg with code.
function M.check(v, msg, code, ...)
  if v then return v, msg, code, ... end
  M.raise(msg, code)
end

return M
