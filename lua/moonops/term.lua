--- Terminal output: TTY detection, colour, progress bars.
local fs = require "moonops.fs"

local M = {}

local quiet = false

function M.set_quiet(q) quiet = q and true or false end
function M.quiet() return quiet end

--- True when file descriptor `fd` (default 1) is a terminal.
function M.isatty(fd)
  return fs.isatty(fd or 1)
end

--- Colour is on for a terminal unless NO_COLOR is set (https://no-color.org).
function M.colour(fd)
  local nc = os.getenv("NO_COLOR")
  if nc and nc ~= "" then return false end
  return M.isatty(fd or 1)
end

local CODES = { red = 31, green = 32, yellow = 33, blue = 34, bold = 1, dim = 2 }

--- Wrap `s` in an ANSI colour when colour is on for `fd` (default stdout).
function M.paint(colour, s, fd)
  if not M.colour(fd) then return s end
  return string.format("\27[%dm%s\27[0m", CODES[colour] or 0, s)
end

local function human_bytes(n)
  local units = { "B", "KiB", "MiB", "GiB" }
  local i = 1
  while n >= 1024 and i < #units do
    n = n / 1024
    i = i + 1
  end
  return i == 1 and string.format("%d %s", n, units[i]) or string.format("%.1f %s", n, units[i])
end
M.human_bytes = human_bytes

--- A progress bar on stderr; a no-op when stderr is not a TTY or with --quiet.
-- bar:update(done, total, extra) redraws at most ~10 times a second; bar:finish() ends the line.
function M.progress(label)
  local bar = { label = label, active = (not quiet) and M.isatty(2), last = -1 }
  local clock = os.clock
  function bar:update(done, total, extra)
    if not self.active then return end
    local t = clock()
    if t - self.last < 0.1 and done ~= total then return end
    self.last = t
    local line
    if total and total > 0 then
      local frac = math.min(done / total, 1)
      local width = 24
      local filled = math.floor(frac * width + 0.5)
      line = string.format("%s [%s%s] %3d%% %d/%d", self.label, string.rep("#", filled),
        string.rep(".", width - filled), math.floor(frac * 100), done, total)
    else
      line = string.format("%s %d", self.label, done)
    end
    if extra then line = line .. " " .. extra end
    io.stderr:write("\r\27[K", line)
    io.stderr:flush()
  end
  function bar:finish(msg)
    if not self.active then return end
    io.stderr:write("\r\27[K", msg and (self.label .. " " .. msg .. "\n") or "")
    io.stderr:flush()
  end
  return bar
end

return M
