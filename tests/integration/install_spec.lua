-- `cmake --install` (what `make install` runs) into a temporary prefix: the installed
-- binary finds its Lua library, recipes and bundled plugins (the native hello-native
-- plugin.so too) under the prefix and runs the demo's recipes from a directory that has
-- nothing of the source tree; `make uninstall` removes exactly what was installed.
local T = require "support.t"
local json = require "moonops.json"

local BUILD = os.getenv("MOONOPS_BUILD_DIR") or T.bin:match("^(.*)/[^/]*$")
local MANIFEST = BUILD .. "/install_manifest.txt"
local SOURCE = (T.sh("realpath " .. T.q(T.root)):gsub("%s+$", ""))

local function realpath(p)
  return (T.sh("realpath -m " .. T.q(p)):gsub("%s+$", ""))
end

local function exists(p)
  local _, ok = T.sh("test -e " .. T.q(p))
  return ok
end

describe("an installed moonops", function()
  local root, prefix, bin, saved_manifest

  local function env(extra)
    local e = { HOME = root .. "/home", GIT_CONFIG_NOSYSTEM = "1", MOONOPS_LUA_PATH = false, MOONOPS_CONFIG = false,
      MOONOPS_RECIPE_PATH = false, MOONOPS_PLUGIN_PATH = false, NO_COLOR = "1", LSAN_OPTIONS = os.getenv("LSAN_OPTIONS") }
    for k, v in pairs(extra or {}) do e[k] = v end
    return e
  end
  -- Run the installed binary in a work directory holding no recipes/ or plugins/.
  local function installed(args, extra)
    local argv = { bin }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    return T.run(argv, { cwd = root .. "/cwd", env = env(extra) })
  end

  lazy_setup(function()
    root = T.tmpdir()
    prefix = root .. "/prefix"
    bin = prefix .. "/bin/moonops"
    os.execute("mkdir -p " .. T.q(root .. "/cwd") .. " " .. T.q(root .. "/home"))
    -- cmake --install rewrites the build's install manifest; keep the user's.
    saved_manifest = T.read(MANIFEST)
    local out, ok = T.sh(string.format("cmake --install %s --prefix %s 2>&1", T.q(BUILD), T.q(prefix)))
    assert(ok, "cmake --install failed:\n" .. out)
  end)

  lazy_teardown(function()
    if saved_manifest then T.write(MANIFEST, saved_manifest) else os.remove(MANIFEST) end
    T.cleanup()
  end)

  it("lays out the binary, library, recipes, plugins, headers, man page, completion and unit", function()
    for _, f in ipairs({
      "bin/moonops",
      "share/moonops/lua/moonops/cli.lua",
      "share/moonops/lua/moonops/builders/buildah.lua",
      "share/moonops/recipes/deploy.lua",
      "share/moonops/recipes/serve.lua",
      "lib/moonops/plugins/notify-webhook/plugin.lua",
      "lib/moonops/plugins/hello-native/plugin.so",
      "include/moonops/plugin.h",
      "include/moonops/moonops.h",
      "share/man/man1/moonops.1",
      "share/bash-completion/completions/moonops",
      "lib/systemd/system/moonops.service",
    }) do
      assert.is_true(exists(prefix .. "/" .. f), f .. " was not installed")
    end
    -- The unit starts the installed binary, and reloads with SIGHUP.
    local unit = T.read(prefix .. "/lib/systemd/system/moonops.service")
    assert.truthy(unit:find("\nExecStart=" .. prefix .. "/bin/moonops serve\n", 1, true), unit)
    assert.truthy(unit:find("\nExecReload=/bin/kill -HUP $MAINPID\n", 1, true), unit)
    assert.truthy(unit:find("\nUser=moonops\n", 1, true), unit)
    -- SIGTERM reaches the server alone, so its grace period for a running hook holds.
    assert.truthy(unit:find("\nKillMode=mixed\n", 1, true), unit)
    -- The man page renders without a warning.
    local out, ok = T.sh("groff -man -Tutf8 -ww -z " .. T.q(prefix .. "/share/man/man1/moonops.1") .. " 2>&1")
    assert.is_true(ok)
    assert.equal("", out)
  end)

  it("finds its library, recipes and plugins under the prefix, not in the source tree", function()
    local r = installed({ "lua", "-e", "local e = require 'moonops.engine'; print(e.lua_dir); print(e.recipe_dir)" })
    assert.equal(0, r.code, r.stderr)
    local lua_dir, recipe_dir = r.stdout:match("^(.-)\n(.-)\n$")
    assert.equal(realpath(prefix .. "/share/moonops/lua"), realpath(lua_dir))
    assert.equal(realpath(prefix .. "/share/moonops/recipes"), realpath(recipe_dir))

    -- Every primitive loads; a primitive built as a shared module loads from the prefix.
    r = installed({ "lua", "-e", [[
      for _, m in ipairs { "git", "http", "server", "crypto", "store", "yaml", "config", "proc", "fs" } do
        require("moonops." .. m)
      end
      for line in io.lines("/proc/self/maps") do
        local so = line:match("(/%S+/modules/%w+%.so)$")
        if so then print(so) end
      end]] })
    assert.equal(0, r.code, r.stderr)
    for so in r.stdout:gmatch("[^\n]+") do
      assert.equal(realpath(prefix .. "/lib/moonops/modules"), realpath(so:match("^(.*)/[^/]+$")))
    end

    r = installed({ "recipes", "--json" })
    assert.equal(0, r.code, r.stderr)
    local names = {}
    for _, rec in ipairs(json.decode(r.stdout)) do
      names[rec.name] = true
      assert.equal(realpath(prefix .. "/share/moonops/recipes/" .. rec.name .. ".lua"), realpath(rec.file))
    end
    for _, want in ipairs({ "deploy", "env", "image", "init", "promote", "schedule", "serve" }) do
      assert.is_true(names[want], want .. " not found")
    end

    r = installed({ "plugins", "--json" })
    assert.equal(0, r.code, r.stderr)
    local files = {}
    for _, p in ipairs(json.decode(r.stdout)) do files[p.name] = realpath(p.file) end
    assert.equal(realpath(prefix .. "/lib/moonops/plugins/hello-native/plugin.so"), files["hello-native"])
    assert.equal(realpath(prefix .. "/lib/moonops/plugins/notify-webhook/plugin.lua"), files["notify-webhook"])
  end)

  it("runs the demo's recipes: init, deploy, env, promote, schedule and the native plugin", function()
    local w = root .. "/cwd"
    local function sh(cmd)
      local out, ok = T.sh(string.format("cd %s && export HOME=%s GIT_CONFIG_NOSYSTEM=1 && { %s; } 2>&1",
        T.q(w), T.q(root .. "/home"), cmd))
      assert(ok, cmd .. ":\n" .. out)
      return out
    end
    sh("git config --global user.name Ines && git config --global user.email ines@example.com"
      .. " && git config --global init.defaultBranch main")
    -- Three repositories holding the example project, as the demo sets them up.
    sh("git init -q project && cp -R " .. T.q(SOURCE .. "/examples/workspace/.") .. " project/"
      .. " && git -C project add -A && git -C project commit -qm 'Example project'"
      .. " && for r in ex-dev ex-staging ex; do git clone -q --bare project repos/$r.git; done")
    local r = installed({ "init", "ops", "--name", "ex", "--repository-base", w .. "/repos/" })
    assert.equal(0, r.code, r.stderr)
    T.write(w .. "/ops/moonops.yml", T.read(w .. "/ops/moonops.yml") .. "plugins:\n  - hello-native: { name: installer }\n"
      .. "schedules:\n  - { name: nightly, cron: \"0 2 * * *\", recipe: deploy, args: [ex] }\n")
    local cfg = { MOONOPS_CONFIG = w .. "/ops/moonops.yml" }

    r = installed({ "deploy", "ex-dev" }, cfg)
    assert.equal(0, r.code, r.stderr)
    assert.truthy(r.stdout:find("COMPLETE: ex%-dev %x+ release"), r.stdout)

    r = installed({ "env", "show", "--workspace", "ex-dev", "--environment", "prod", "--plugin", "tap-auth0" }, cfg)
    assert.equal(0, r.code, r.stderr)
    assert.truthy(r.stdout:find("client_id%s+prod%-client%-u4kcVHKU%s+environment"), r.stdout)
    assert.truthy(r.stdout:find("client_secret%s+%(redacted%)"), r.stdout)

    sh("sed -i 's/2024-01-01/2024-03-01/' project/meltano.yml && git -C project commit -qam 'March'"
      .. " && git -C project push -q " .. T.q(w .. "/repos/ex-dev.git") .. " main")
    r = installed({ "promote", "--to", "ex-staging", "--dry-run" }, cfg)
    assert.equal(0, r.code, r.stderr)
    assert.truthy(r.stdout:find("tap-auth0.job_start_date: 2024-01-01 -> 2024-03-01", 1, true), r.stdout)
    assert.truthy(r.stdout:find("dry run: nothing pushed", 1, true), r.stdout)

    r = installed({ "schedule", "list", "--json" }, cfg)
    assert.equal(0, r.code, r.stderr)
    assert.equal("nightly", json.decode(r.stdout)[1].name)

    r = installed({ "hello-native" }, cfg)
    assert.equal(0, r.code, r.stderr)
    assert.equal("hello, installer (from C)\n", r.stdout)
  end)

  it("completes recipes, options and workspace names with the installed bash completion", function()
    local script = string.format([[
      source %s
      complete_line() {
        COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); COMPREPLY=(); _moonops; echo "${COMPREPLY[*]}"
      }
      complete_line %s prom
      complete_line %s deploy --li
      complete_line %s env ""
      complete_line %s --config %s deploy ex-s
    ]], T.q(prefix .. "/share/bash-completion/completions/moonops"), T.q(bin), T.q(bin), T.q(bin), T.q(bin),
      T.q(root .. "/cwd/ops/moonops.yml"))
    T.write(root .. "/complete.sh", script)
    local out, ok = T.sh(string.format("cd %s && env -u MOONOPS_LUA_PATH HOME=%s bash %s 2>&1", T.q(root .. "/cwd"),
      T.q(root .. "/home"), T.q(root .. "/complete.sh")))
    assert.is_true(ok, out)
    assert.equal("promote\n--limit --list\nlist show diff use\nex-staging\n", out)
  end)

  it("says where it looked when its Lua library is missing", function()
    local r = installed({ "recipes" }, { MOONOPS_LUA_PATH = root .. "/nowhere" })
    assert.equal(1, r.code)
    assert.truthy(r.stderr:find("moonops: cannot load the Lua library from " .. root .. "/nowhere", 1, true), r.stderr)
  end)

  it("is removed by `make uninstall`, which leaves files it did not install", function()
    T.write(prefix .. "/lib/moonops/plugins/mine/plugin.lua", "return {name = 'mine'}\n")
    local out, ok = T.sh(string.format("make -s -C %s uninstall BUILD=%s PREFIX=%s 2>&1", T.q(T.root), T.q(BUILD),
      T.q(prefix)))
    assert.is_true(ok, out)
    for _, f in ipairs({ "bin/moonops", "share/moonops", "include/moonops", "share/man/man1/moonops.1",
      "share/bash-completion/completions/moonops", "lib/systemd/system/moonops.service",
      "lib/moonops/plugins/hello-native" }) do
      assert.is_false(exists(prefix .. "/" .. f), f .. " is still there")
    end
    assert.equal("return {name = 'mine'}\n", T.read(prefix .. "/lib/moonops/plugins/mine/plugin.lua"))
  end)
end)
