-- The README cannot go stale: every command it shows is run here, in order, in one
-- shell session, and its output must match what the README prints.
--
-- How the README is read:
--   ```console blocks hold `$ command` lines, each followed by its expected output.
--     A command ending in `\` continues on the next line; a here-document (<<'EOF')
--     runs to its terminator. `# exit N` at the end of a command expects exit code N
--     (0 otherwise). An output line `...` stands for any number of lines, and `...`
--     inside a line for any text. A command followed directly by the next one has
--     its output left unchecked (its exit code still is).
--   <!-- readme-test: write PATH --> before a fenced block writes the block to PATH
--     (relative to the session's current directory) at that point; `append PATH`
--     appends it.
--   <!-- readme-test: skip REASON --> before a fenced block leaves it out; only
--     blocks with a reason may be skipped, and sh/bash/shell blocks must be either
--     console blocks or skipped, so no command hides in the README untested.
-- The world the session runs in: HOME is a temporary directory and the current
-- directory at the start; `moonops` on PATH is the binary under test; git daemon
-- serves analytics-dev.git, analytics-staging.git and analytics.git (each holding
-- examples/workspace) on the port the README calls 9418; a docker-registry holding a
-- small base image `meltano-base` is the README's 127.0.0.1:5000; the README's
-- 127.0.0.1:8080 is a free port. Before comparing, ports and paths are mapped back to
-- the README's, and times, UUIDs, hex ids and runs of spaces are normalised.
-- README_CAPTURE=FILE writes every command's actual (mapped) output to FILE.
local T = require "support.t"

local SOURCE = (T.sh("realpath " .. T.q(T.root)):gsub("%s+$", ""))
local README = SOURCE .. "/README.md"

-- README.md -> list of steps: {kind = "run", cmd=, expect= (list|nil), exit=, line=}
-- | {kind = "file", path=, mode = "write"|"append", content=, line=}; and the skipped blocks.
local function parse(text)
  local lines = {}
  for l in (text .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = l end
  local steps, skipped, unmarked = {}, {}, {}
  local i, marker = 1, nil
  while i <= #lines do
    local l = lines[i]
    local m = l:match("^<!%-%- readme%-test: (.-) %-%->$")
    if m then
      marker = { text = m, line = i }
      i = i + 1
    else
      local fence, info = l:match("^(```+)(%S*)")
      if fence then
        local body, j = {}, i + 1
        while j <= #lines and lines[j] ~= fence do
          body[#body + 1] = lines[j]
          j = j + 1
        end
        local action, arg
        if marker then action, arg = marker.text:match("^(%S+)%s*(.-)$") end
        if action == "skip" then
          skipped[#skipped + 1] = { line = i, reason = arg, info = info }
        elseif action == "write" or action == "append" then
          steps[#steps + 1] = { kind = "file", path = arg, mode = action, content = table.concat(body, "\n") .. "\n",
            line = i }
        elseif action then
          error(string.format("README.md:%d: unknown readme-test marker %q", marker.line, marker.text))
        elseif info == "console" then
          local k = 1
          while k <= #body do
            local cmd = body[k]:match("^%$ (.*)$")
            if not cmd then
              error(string.format("README.md:%d: console block line is not a command: %s", i + k, body[k]))
            end
            local line = i + k
            k = k + 1
            while cmd:match("\\$") and k <= #body do
              cmd = cmd .. "\n" .. body[k]
              k = k + 1
            end
            local eof = cmd:match("<<%-?'?([%w_]+)'?")
            if eof then
              while k <= #body and body[k] ~= eof do
                cmd = cmd .. "\n" .. body[k]
                k = k + 1
              end
              cmd = cmd .. "\n" .. eof
              k = k + 1
            end
            local expect = {}
            while k <= #body and not body[k]:match("^%$ ") do
              expect[#expect + 1] = body[k]
              k = k + 1
            end
            local code = tonumber(cmd:match("#%s*exit (%d+)%s*$") or "0")
            steps[#steps + 1] = { kind = "run", cmd = cmd, expect = #expect > 0 and expect or nil, exit = code,
              line = line }
          end
        elseif info == "sh" or info == "bash" or info == "shell" then
          unmarked[#unmarked + 1] = i
        end
        marker = nil
        i = j + 1
      else
        if l:match("%S") then marker = nil end
        i = i + 1
      end
    end
  end
  return steps, skipped, unmarked
end

local function replace_all(s, from, to)
  local out, pos = {}, 1
  while true do
    local a, b = s:find(from, pos, true)
    if not a then break end
    out[#out + 1] = s:sub(pos, a - 1) .. to
    pos = b + 1
  end
  out[#out + 1] = s:sub(pos)
  return table.concat(out)
end

local function normalise(line)
  line = line:gsub("%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x", "<uuid>")
  line = line:gsub("%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[%.%d]*Z", "<time>")
  line = line:gsub("%d%d%d%d%d%d%d%dT%d%d%d%d%d%d[%.%d]*Z", "<time>")
  line = line:gsub("<time>%-%d+$", "<time>"):gsub("<time>%-%d+([^%x])", "<time>%1") -- same-second suffixes
  line = line:gsub("%f[%d]%d%d:%d%d:%d%d%f[%D]", "<clock>")
  line = line:gsub("%x+", function(h)
    if #h >= 7 and (h:find("%a") or #h == 12 or #h == 40) then return "<hex>" end
  end)
  line = line:gsub("%s+", " "):gsub("^ ", ""):gsub(" $", "")
  return line
end

-- An expected line as an anchored Lua pattern: `...` matches any text.
local function line_pattern(line)
  local parts, pos = {}, 1
  while true do
    local a, b = line:find("...", pos, true)
    if not a then break end
    parts[#parts + 1] = (line:sub(pos, a - 1):gsub("%p", "%%%0"))
    pos = b + 1
  end
  parts[#parts + 1] = (line:sub(pos):gsub("%p", "%%%0"))
  return "^" .. table.concat(parts, ".-") .. "$"
end

local function matches(expect, actual, e, a)
  e, a = e or 1, a or 1
  if e > #expect then return a > #actual end
  if expect[e] == "..." then
    for k = a, #actual + 1 do
      if matches(expect, actual, e + 1, k) then return true end
    end
    return false
  end
  if a > #actual then return false end
  if not actual[a]:match(line_pattern(expect[e])) then return false end
  return matches(expect, actual, e + 1, a + 1)
end

local function lines_of(s)
  local out = {}
  for l in (s:gsub("\n+$", "") .. "\n"):gmatch("(.-)\n") do out[#out + 1] = l end
  if #out == 1 and out[1] == "" then out = {} end
  return out
end

describe("README.md", function()
  local readme = assert(T.read(README), "no README.md")
  local steps, skipped, unmarked = parse(readme)

  it("shows every command in a console block that is run, or says why it is not", function()
    assert.same({}, unmarked, "sh blocks without a readme-test marker at these README lines")
    for _, s in ipairs(skipped) do
      assert.truthy(s.reason and #s.reason > 10, "README.md:" .. s.line .. ": a skipped block needs its reason")
    end
    assert.is_true(#skipped <= 8, "most of the README must run; skipped blocks: " .. #skipped)
    local runs = 0
    for _, s in ipairs(steps) do
      if s.kind == "run" then runs = runs + 1 end
    end
    assert.is_true(runs >= 40, "expected the README to show its commands; found " .. runs)
    -- make test and make demo stay at the top.
    local quick = readme:find("make demo", 1, true)
    assert.truthy(quick and quick < 1500 and readme:find("make test", 1, true) < 1500, "make demo/make test not at the top")
  end)

  it("matches what its commands print, run in order in one session", function()
    local root = T.tmpdir()
    local home, srv, bin = root .. "/home", root .. "/srv", root .. "/bin"
    local BIN = (T.sh("realpath " .. T.q(T.bin)):gsub("%s+$", ""))
    os.execute(string.format("mkdir -p %s %s %s && ln -s %s %s/moonops", T.q(home), T.q(srv), T.q(bin), T.q(BIN),
      T.q(bin)))
    local env = string.format("export HOME=%s GIT_CONFIG_NOSYSTEM=1 NO_COLOR=1 TMPDIR=%s PATH=%s:$PATH; "
      .. "unset MOONOPS_CONFIG MOONOPS_RECIPE_PATH MOONOPS_PLUGIN_PATH MOONOPS_LUA_PATH MELTANO_ENVIRONMENT "
      .. "MOONOPS_GIT_TOKEN MOONOPS_API_TOKENS MELTANO_DATAFLOW_DOCKERREGISTRY; "
      -- sanitizer builds: leak reports still fail a command, the statistics of suppressed ones stay quiet
      .. "export LSAN_OPTIONS=\"${LSAN_OPTIONS:+$LSAN_OPTIONS:}print_suppressions=0\"; ", T.q(home), T.q(root), T.q(bin))
    local function sh(cmd)
      local out, ok = T.sh(env .. "{ " .. cmd .. "\n} 2>&1")
      assert(ok, cmd .. ":\n" .. out)
      return out
    end
    sh("git config --global user.name 'Dana Engineer' && git config --global user.email dana@example.com"
      .. " && git config --global init.defaultBranch main")
    -- The three repositories, served by git daemon.
    sh(string.format("cd %s && git init -q project && cp -R %s/examples/workspace/. project/"
      .. " && git -C project add -A && git -C project commit -qm 'Example Meltano project'"
      .. " && for r in analytics-dev analytics-staging analytics; do git clone -q --bare project srv/$r.git; done",
      T.q(root), T.q(SOURCE)))
    local ports = { git = T.free_port(), api = T.free_port(), registry = T.free_port() }
    local pids = {}
    pids[#pids + 1] = T.spawn(string.format("exec git daemon --reuseaddr --listen=127.0.0.1 --port=%d --base-path=%s "
      .. "--export-all --enable=receive-pack %s", ports.git, T.q(srv), T.q(srv)))
    -- A registry with a small base image (busybox and a stand-in meltano command).
    T.write(root .. "/registry.yml", string.format("version: 0.1\nlog: {level: error}\nstorage: {filesystem: "
      .. "{rootdirectory: %s/registry}}\nhttp: {addr: \"127.0.0.1:%d\", secret: readme}\n", root, ports.registry))
    pids[#pids + 1] = T.spawn("exec docker-registry serve " .. T.q(root .. "/registry.yml"))
    local storage = root .. "/containers"
    local containers = string.format("export CONTAINERS_STORAGE_CONF=%s/storage.conf STORAGE_DRIVER=vfs; ", storage)
    T.write(storage .. "/storage.conf", string.format("[storage]\ndriver = \"vfs\"\nrunroot = \"%s/run\"\n"
      .. "graphroot = \"%s/root\"\n", storage, storage))
    T.write(root .. "/base/meltano", "#!/bin/sh\necho \"meltano $*: done\"\n")
    T.write(root .. "/base/Dockerfile", "FROM scratch\nCOPY busybox /bin/busybox\n"
      .. "RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCOPY meltano /bin/meltano\nRUN mkdir -p /tmp /root\n")
    assert.truthy(T.wait_for(function() return T.port_open(ports.git) and T.port_open(ports.registry) end, 20))
    local base = string.format("127.0.0.1:%d/meltano-base:latest", ports.registry)
    sh(containers .. string.format("cd %s/base && cp /bin/busybox . && chmod +x meltano"
      .. " && buildah bud -q --isolation chroot -t %s . >/dev/null && buildah push -q --tls-verify=false %s >/dev/null",
      T.q(root), base, base))

    -- README ports and paths <-> the session's.
    local to_session = {
      { "127.0.0.1:9418", "127.0.0.1:" .. ports.git },
      { "127.0.0.1:8080", "127.0.0.1:" .. ports.api },
      { "127.0.0.1:5000", "127.0.0.1:" .. ports.registry },
    }
    -- The binary runs from the build tree; the README shows the installed layout.
    local build_dir = BIN:match("^(.*)/[^/]*$")
    local to_readme = {
      { BIN, "/usr/local/bin/moonops" },
      { SOURCE .. "/recipes/", "/usr/local/share/moonops/recipes/" },
      { SOURCE .. "/plugins/", "/usr/local/lib/moonops/plugins/" },
      { build_dir .. "/plugins/", "/usr/local/lib/moonops/plugins/" },
      { home, "/home/dana" },
      { "127.0.0.1:" .. ports.git, "127.0.0.1:9418" },
      { "127.0.0.1:" .. ports.api, "127.0.0.1:8080" },
      { "127.0.0.1:" .. ports.registry, "127.0.0.1:5000" },
      { "port=" .. ports.api, "port=8080" },
    }

    -- One bash script: every step, with markers around each command's output.
    local script = { "echo $$ > " .. T.q(root .. "/session.pid"), env, containers, "cd " .. T.q(home) }
    for n, s in ipairs(steps) do
      if s.kind == "file" then
        script[#script + 1] = string.format("mkdir -p \"$(dirname %s)\" && cat %s %s <<'@@README@@'\n%s@@README@@",
          T.q(s.path), s.mode == "append" and ">>" or ">", T.q(s.path), s.content)
      else
        local cmd = s.cmd
        for _, m in ipairs(to_session) do cmd = replace_all(cmd, m[1], m[2]) end
        script[#script + 1] = string.format(
          "printf '\\n@@CMD %d@@\\n'\n{ %s\n} </dev/null 2>&1\nprintf '\\n@@EXIT %d %%d@@\\n' $?", n, cmd, n)
      end
    end
    T.write(root .. "/session.sh", table.concat(script, "\n") .. "\n")
    local _, finished = T.sh(string.format("timeout 240 setsid bash %s >%s 2>&1 </dev/null", T.q(root .. "/session.sh"),
      T.q(root .. "/session.out")))
    -- Stop everything the session left running (`moonops serve &`), then the world.
    local pgid = (T.read(root .. "/session.pid") or ""):match("%d+")
    if pgid then os.execute("kill -TERM -- -" .. pgid .. " 2>/dev/null") end
    for _, pid in ipairs(pids) do T.kill(pid) end
    os.execute(containers .. "buildah rm -a >/dev/null 2>&1; buildah rmi -a -f >/dev/null 2>&1")
    local out = T.read(root .. "/session.out") or ""
    if not finished then
      T.cleanup()
      error("the README session did not finish within 240 s:\n" .. out:sub(-3000))
    end

    local capture = {}
    local failures = {}
    for n, s in ipairs(steps) do
      if s.kind == "run" then
        local body, code = out:match("\n@@CMD " .. n .. "@@\n(.-)\n@@EXIT " .. n .. " (%d+)@@\n")
        if not body then
          failures[#failures + 1] = string.format("README.md:%d: `%s` did not run", s.line, s.cmd)
        else
          for _, m in ipairs(to_readme) do body = replace_all(body, m[1], m[2]) end
          capture[#capture + 1] = string.format("## README.md:%d (exit %s)\n$ %s\n%s", s.line, code, s.cmd, body)
          local actual, expect = {}, {}
          for _, l in ipairs(lines_of(body)) do actual[#actual + 1] = normalise(l) end
          for _, l in ipairs(s.expect or {}) do expect[#expect + 1] = l == "..." and l or normalise(l) end
          if tonumber(code) ~= s.exit then
            failures[#failures + 1] = string.format("README.md:%d: `%s` exited %s, the README says %d:\n%s", s.line,
              s.cmd, code, s.exit, body)
          elseif s.expect and not matches(expect, actual) then
            failures[#failures + 1] = string.format("README.md:%d: `%s` printed\n%s\nbut the README shows\n%s", s.line,
              s.cmd, body, table.concat(s.expect, "\n"))
          end
        end
      end
    end
    local capture_file = os.getenv("README_CAPTURE")
    if capture_file then T.write(capture_file, table.concat(capture, "\n")) end
    T.cleanup()
    assert.same({}, failures)
  end)

  it("catches a stale example", function()
    -- The checker itself: a wrong line, a missing line and a wrong exit code are caught.
    local s = parse("```console\n$ echo hi\nhello\n$ false # exit 1\n$ true\n...\n```\n")
    assert.equal(3, #s)
    assert.same({ "hello" }, s[1].expect)
    assert.equal(1, s[2].exit)
    assert.is_false(matches({ normalise("hello") }, { normalise("hi") }))
    assert.is_true(matches({ "a", "...", "d" }, { "a", "b", "c", "d" }))
    assert.is_false(matches({ "a", "...", "d" }, { "a", "b", "c" }))
    assert.is_true(matches({ normalise("id 7 at 2026-01-01T00:00:00Z, commit 1a2b3c4d5e6f") },
      { normalise("id 7 at 2031-05-06T07:08:09Z, commit 9f8e7d6c5b4a") }))
    assert.is_false(matches({ normalise("id 7") }, { normalise("id 8") }))
    assert.is_true(matches({ "pushed ... to demo" }, { "pushed abc to demo" }))
    assert.is_true(matches({ "COPY . ." }, { "COPY . ." }))
    assert.is_false(matches({ "COPY . ." }, { "COPY . x" }))
    local _, skips, bare = parse("```sh\nrm -rf /\n```\n<!-- readme-test: skip needs systemd here -->\n```sh\nx\n```\n")
    assert.same({ 1 }, bare)
    assert.equal(1, #skips)
  end)
end)
