--- A git fast-import stream for the promotion benchmark, on stdout.
-- Usage: moonops lua bench/promote/generate.lua SIDE [FILES] [COMMITS]
-- SIDE is "source" or "target". Both sides share one base commit (same SHA, fixed
-- dates) with FILES files; then each side adds COMMITS commits on refs/heads/main,
-- touching files of its own half of the tree plus one shared file, so the merge
-- is a real three-way merge with conflicting hunks that -X theirs resolves.
local side = arg[1]
local files = tonumber(arg[2]) or 10000
local commits = tonumber(arg[3]) or 1000
assert(side == "source" or side == "target", "usage: generate.lua source|target [FILES] [COMMITS]")

local out = io.stdout
local dirs = 100
local per_dir = files // dirs
local t0 = 1700000000

local function path(i)
  return string.format("pipelines/d%03d/model_%05d.sql", i % dirs, i)
end

local function content(i, rev, who)
  return string.format("-- model %d\nselect %d as id,\n  '%s' as origin,\n  %d as revision\nfrom source_%d\n",
    i, i, who, rev, i % 97)
end

local function data(s)
  out:write("data ", #s, "\n", s, "\n")
end

local function commit(msg, t, body)
  out:write("commit refs/heads/main\n")
  out:write(string.format("author Bench <bench@example.com> %d +0000\n", t))
  out:write(string.format("committer Bench <bench@example.com> %d +0000\n", t))
  data(msg)
  body()
end

commit("base\n", t0, function()
  for i = 0, per_dir * dirs - 1 do
    out:write("M 100644 inline ", path(i), "\n")
    data(content(i, 0, "base"))
  end
  out:write("M 100644 inline meltano.yml\n")
  data("version: 1\ndefault_environment: prod\nproject_id: bench\nenvironments:\n- name: dev\n- name: prod\n")
end)

-- source edits even directories, target odd ones; both edit shared.sql on the same line
local offset = side == "source" and 0 or 1
local n = per_dir * dirs
for c = 1, commits do
  commit(string.format("%s change %d\n", side, c), t0 + c * 60 + offset, function()
    for k = 0, 4 do
      local i = ((c * 5 + k) * 2 + offset) % n
      if (i % dirs) % 2 ~= offset then i = (i + 1) % n end
      out:write("M 100644 inline ", path(i), "\n")
      data(content(i, c, side))
    end
    out:write("M 100644 inline shared.sql\n")
    data(string.format("select '%s' as last_writer, %d as revision\n", side, c))
  end)
end
out:write("done\n")
