local T = require "support.t"
local json = require "moonops.json"
local store = require "moonops.store"

local function one_line(s)
  return s:match("^[^\n]*\n$") ~= nil
end

describe("moonops command line", function()
  local dir, env

  -- Run moonops in the temp dir with a clean environment for the recipe search path.
  local function mo(args, opts)
    opts = opts or {}
    local e = { HOME = dir .. "/home", MOONOPS_RECIPE_PATH = false, NO_COLOR = "1" }
    for k, v in pairs(env or {}) do e[k] = v end
    for k, v in pairs(opts.env or {}) do e[k] = v end
    return T.moonops(args, { cwd = opts.cwd or dir, env = e, stdin = opts.stdin })
  end

  local function recipe(path, body)
    T.write(path, body)
  end

  before_each(function()
    dir = T.tmpdir()
    env = nil
  end)

  after_each(function() T.cleanup() end)

  describe("version", function()
    it("prints one line with moonops and every linked library", function()
      local r = mo({ "version" })
      assert.equal(0, r.code)
      assert.is_true(one_line(r.stdout))
      assert.matches("^moonops %d+%.%d+%.%d+ %(Lua 5%.4%.%d+, libgit2 %d+%.%d+%.%d+, libcurl %d[%w.]*, "
        .. "OpenSSL %d[%w.]*, libyaml %d[%w.]*, SQLite %d[%w.]*, libmicrohttpd %d[%w.]*%)\n$", r.stdout)
      assert.truthy(r.stdout:find("SQLite " .. store.sqlite_version, 1, true))
      assert.equal(r.stdout, mo({ "--version" }).stdout)
    end)
  end)

  describe("lua", function()
    it("runs code given with -e", function()
      local r = mo({ "lua", "-e", "print(require('moonops.json').encode({1, 2}))" })
      assert.equal(0, r.code)
      assert.equal("[1,2]\n", r.stdout)
    end)

    it("runs a file and sets arg and ... like the lua interpreter", function()
      T.write(dir .. "/script.lua", [[
        print(arg[0], #arg, arg[1], arg[2], select("#", ...), ...)
        os.exit(tonumber(arg[3]) or 0)
      ]])
      local r = mo({ "lua", "script.lua", "one", "two words", "5" })
      assert.equal(5, r.code)
      assert.equal("script.lua\t3\tone\ttwo words\t3\tone\ttwo words\t5\n", r.stdout)
    end)

    it("reports a missing file, a syntax error and a runtime error in one line", function()
      local missing = mo({ "lua", "nope.lua" })
      assert.equal(1, missing.code)
      assert.equal("moonops: cannot open nope.lua: No such file or directory\n", missing.stderr)
      T.write(dir .. "/bad.lua", "local x = \nprint(")
      local syntax = mo({ "lua", "bad.lua" })
      assert.equal(1, syntax.code)
      assert.is_true(one_line(syntax.stderr))
      assert.matches("^moonops: bad%.lua:2: ", syntax.stderr)
      local raised = mo({ "lua", "-e", "error('went wrong')" })
      assert.equal(1, raised.code)
      assert.equal("moonops: (command line):1: went wrong\n", raised.stderr)
    end)

    it("adds a traceback with --debug", function()
      local r = mo({ "--debug", "lua", "-e", "local function f() error('deep') end f()" })
      assert.equal(1, r.code)
      assert.matches("^moonops: %(command line%):1: deep\nstack traceback:\n", r.stderr)
      assert.matches("in local 'f'", r.stderr)
      local _, tracebacks = r.stderr:gsub("stack traceback:", "")
      assert.equal(1, tracebacks)
    end)

    it("needs a file or -e CODE", function()
      assert.equal(2, mo({ "lua" }).code)
      assert.equal(2, mo({ "lua", "-e" }).code)
    end)
  end)

  describe("recipes", function()
    it("lists the bundled hello recipe with its summary and file", function()
      local r = mo({ "recipes" })
      assert.equal(0, r.code)
      local line = r.stdout:match("\n?(hello [^\n]*)")
      assert.truthy(line, r.stdout)
      assert.matches("^hello +Say hello +/.*/recipes/hello%.lua$", line)
    end)

    it("prints JSON with --json", function()
      local r = mo({ "recipes", "--json" })
      assert.equal(0, r.code)
      local list = assert(json.decode(r.stdout))
      assert.is_true(json.is_array(list))
      local hello
      for _, e in ipairs(list) do
        if e.name == "hello" then hello = e end
      end
      assert.equal("Say hello", hello.summary)
      assert.equal("bundled", hello.origin)
      assert.matches("/recipes/hello%.lua$", hello.file)
    end)

    it("lets ./recipes/hello.lua override the bundled hello, and shows the winner", function()
      recipe(dir .. "/recipes/hello.lua", [[
        return { summary = "Custom hello", run = function() print("custom hello") end }
      ]])
      local r = mo({ "recipes" })
      assert.matches("\nhello +Custom hello +recipes/hello%.lua\n", "\n" .. r.stdout)
      local list = json.decode(mo({ "recipes", "--json" }).stdout)
      for _, e in ipairs(list) do
        if e.name == "hello" then
          assert.equal("recipes/hello.lua", e.file)
          assert.equal("./recipes", e.origin)
          assert.equal(1, #e.shadows)
          assert.matches("/recipes/hello%.lua$", e.shadows[1])
        end
      end
      local run = mo({ "hello" })
      assert.equal(0, run.code)
      assert.equal("custom hello\n", run.stdout)
    end)

    it("searches --recipes DIR, then $MOONOPS_RECIPE_PATH, then ./recipes, then ~/.config", function()
      local function which(args, e)
        local r = mo(args or { "which" }, { env = e })
        assert.equal(0, r.code, r.stderr)
        return r.stdout:match("^(%S+)")
      end
      for _, place in ipairs({ "flag", "env1", "env2", "recipes", "home/.config/moonops/recipes" }) do
        recipe(dir .. "/" .. place .. "/which.lua", string.format(
          "return { summary = %q, run = function() print(%q) end }", place, place))
      end
      local both = { MOONOPS_RECIPE_PATH = dir .. "/env1:" .. dir .. "/env2" }
      assert.equal("flag", which({ "--recipes", dir .. "/flag", "which" }, both))
      assert.equal("env1", which(nil, both))
      assert.equal("env2", which(nil, { MOONOPS_RECIPE_PATH = dir .. "/env2:" .. dir .. "/env1" }))
      assert.equal("recipes", which())
      os.remove(dir .. "/recipes/which.lua")
      assert.equal("home/.config/moonops/recipes", which())
      -- and `recipes` reports where the name resolved
      local r = mo({ "--recipes", dir .. "/flag", "recipes", "--json" }, { env = both })
      for _, e in ipairs(json.decode(r.stdout)) do
        if e.name == "which" then
          assert.equal(dir .. "/flag/which.lua", e.file)
          assert.equal("--recipes", e.origin)
          assert.equal(3, #e.shadows)
        end
      end
    end)

    it("reads plain summaries without running the recipe file, and runs it for a computed one", function()
      recipe(dir .. "/recipes/plain.lua", string.format([[
        io.open(%q, "w"):close()
        return { summary = 'Plain one', commands = { x = { summary = "not this", run = print } } }
      ]], dir .. "/plain-ran"))
      recipe(dir .. "/recipes/computed.lua", string.format([[
        io.open(%q, "w"):close()
        local summary = "Computed " .. "summary"
        return { summary = summary, run = print }
      ]], dir .. "/computed-ran"))
      local r = mo({ "recipes" })
      assert.equal(0, r.code)
      assert.matches("\nplain +Plain one +recipes/plain%.lua\n", "\n" .. r.stdout)
      assert.matches("\ncomputed +Computed summary +recipes/computed%.lua\n", "\n" .. r.stdout)
      assert.is_nil(T.read(dir .. "/plain-ran"))
      assert.equal("", T.read(dir .. "/computed-ran"))
    end)

    it("still lists a recipe file that does not load, marked broken", function()
      recipe(dir .. "/recipes/broken.lua", "return {")
      local r = mo({ "recipes" })
      assert.equal(0, r.code)
      assert.matches("\nbroken +%(broken: recipes/broken%.lua:1: [^\n]+%) +recipes/broken%.lua\n", "\n" .. r.stdout)
    end)
  end)

  describe("running a recipe", function()
    it("parses declared options and passes positionals", function()
      local r = mo({ "hello", "--name", "you" })
      assert.equal(0, r.code)
      assert.matches("INFO hello you\n$", r.stderr)
      local loud = mo({ "hello", "--name=ops", "--loud" })
      assert.matches("INFO HELLO OPS!\n$", loud.stderr)
      local default = mo({ "hello" })
      assert.matches("INFO hello world\n$", default.stderr)
    end)

    it("runs a recipe file by path with options", function()
      T.write(dir .. "/x.lua", [[
        return {
          options = { { "flag", type = "string" }, { "count", type = "integer", default = 1 },
                      { "on", type = "boolean" } },
          run = function(ctx, opts)
            print(opts.flag, opts.count, math.type(opts.count), opts.on, table.concat(ctx.args, ","))
          end,
        }
      ]])
      local r = mo({ "run", "./x.lua", "--flag", "v", "--count", "7", "--on", "a", "b" })
      assert.equal(0, r.code, r.stderr)
      assert.equal("v\t7\tinteger\ttrue\ta,b\n", r.stdout)
      local defaults = mo({ "run", "./x.lua" })
      assert.equal("nil\t1\tinteger\tnil\t\n", defaults.stdout)
      local dashdash = mo({ "run", "./x.lua", "--", "--flag" })
      assert.equal("nil\t1\tinteger\tnil\t--flag\n", dashdash.stdout)
    end)

    it("uses the recipe's return value as the exit code", function()
      local codes = { ["nil"] = 0, ["3"] = 3, ["true"] = 0, ["false"] = 1, ["0"] = 0 }
      for ret, code in pairs(codes) do
        T.write(dir .. "/ret.lua", "return { run = function() return " .. ret .. " end }")
        local r = mo({ "run", "ret.lua" })
        assert.equal(code, r.code, "return " .. ret)
        assert.equal("", r.stderr)
      end
    end)

    it("exits with the code of a raised moonops error", function()
      T.write(dir .. "/busy.lua", [[
        local errors = require "moonops.errors"
        return { run = function() errors.raise("workspace dev is busy: try again later", errors.BUSY) end }
      ]])
      local r = mo({ "run", "busy.lua" })
      assert.equal(4, r.code)
      assert.equal("moonops: workspace dev is busy: try again later\n", r.stderr)
    end)

    it("masks registered secrets in the error line", function()
      T.write(dir .. "/leak.lua", [[
        return { run = function(ctx)
          ctx.log.secret("tok-123456")
          error("request with tok-123456 failed", 0)
        end }
      ]])
      local r = mo({ "run", "leak.lua" })
      assert.equal(1, r.code)
      assert.equal("moonops: request with *** failed\n", r.stderr)
    end)
  end)

  describe("the recipe context", function()
    it("opens the state database under data_dir on first use of ctx.store", function()
      T.write(dir .. "/moonops.yml", "data_dir: state\n")
      T.write(dir .. "/count.lua", [[
        local db = require "moonops.db"
        return { run = function(ctx)
          ctx.store:exec("INSERT INTO schedule_runs (schedule, status, started_at) VALUES (?, ?, ?)",
            "nightly", "COMPLETE", db.now())
          print(ctx.store:one("SELECT count(*) AS n FROM schedule_runs").n)
        end }
      ]])
      assert.equal("1\n", mo({ "run", "count.lua" }).stdout)
      local r = mo({ "run", "count.lua" })
      assert.equal(0, r.code, r.stderr)
      assert.equal("2\n", r.stdout)
      assert.equal("700\n", T.sh("stat -c %a " .. T.q(dir .. "/state")))
    end)

    it("refuses a state database from a newer moonops with a usage error", function()
      T.write(dir .. "/moonops.yml", "data_dir: state\n")
      T.write(dir .. "/touch.lua", "return { run = function(ctx) return ctx.store and 0 end }")
      assert.equal(0, mo({ "run", "touch.lua" }).code)
      local h = assert(store.open(dir .. "/state/moonops.db"))
      h:exec("PRAGMA user_version = 99")
      h:close()
      local r = mo({ "run", "touch.lua" })
      assert.equal(2, r.code)
      assert.matches("^moonops: /.*/state/moonops%.db was written by a newer moonops %(schema 99, this one knows 1%): "
        .. "upgrade moonops or use another data_dir\n$", r.stderr)
    end)
  end)

  describe("help", function()
    it("shows a recipe's options through help and --help", function()
      local a = mo({ "help", "hello" })
      local b = mo({ "hello", "--help" })
      local c = mo({ "hello", "-h" })
      assert.equal(0, a.code)
      assert.equal(0, b.code)
      assert.equal(a.stdout, b.stdout)
      assert.equal(a.stdout, c.stdout)
      assert.matches("^moonops hello %[options%]\n\nSay hello\n", a.stdout)
      assert.matches("\n  %-%-name STRING +who to greet %(default world%)\n", a.stdout)
      assert.matches("\n  %-%-loud +shout\n", a.stdout)
      assert.matches("\n  %-h, %-%-help +show this help\n", a.stdout)
    end)

    it("lists commands and recipes; without arguments it is a usage error", function()
      local r = mo({ "help" })
      assert.equal(0, r.code)
      assert.matches("\nCommands:\n", r.stdout)
      assert.matches("\n  hello +Say hello\n", r.stdout)
      assert.matches("Exit codes: 0 ok, 1 failure, 2 usage", r.stdout)
      local bare = mo({})
      assert.equal(2, bare.code)
      assert.equal(r.stdout, bare.stdout)
      assert.equal(r.stdout, mo({ "--help" }).stdout)
      assert.equal(0, mo({ "-h" }).code)
    end)

    it("explains built-in commands", function()
      local r = mo({ "help", "version" })
      assert.equal(0, r.code)
      assert.matches("^moonops version: ", r.stdout)
    end)
  end)

  describe("bad input", function()
    it("an unknown recipe suggests the closest name and exits 2", function()
      local r = mo({ "hllo" })
      assert.equal(2, r.code)
      assert.equal("moonops: unknown recipe \"hllo\" (did you mean hello?); 'moonops recipes' lists them\n",
        r.stderr)
      assert.equal("", r.stdout)
      local far = mo({ "zzzzzzzzzz" })
      assert.equal(2, far.code)
      assert.equal("moonops: unknown recipe \"zzzzzzzzzz\"; 'moonops recipes' lists them\n", far.stderr)
      assert.equal(2, mo({ "help", "zzzzzzzzzz" }).code)
    end)

    it("an unknown option suggests the closest one and exits 2", function()
      local r = mo({ "hello", "--nmae", "x" })
      assert.equal(2, r.code)
      assert.equal("moonops: unknown option --nmae (did you mean --name?)\n", r.stderr)
      local global = mo({ "--quite", "hello" })
      assert.equal(2, global.code)
      assert.equal("moonops: unknown option --quite (did you mean --quiet?)\n", global.stderr)
      assert.equal(2, mo({ "hello", "-z" }).code)
    end)

    it("a missing or malformed option value exits 2", function()
      local r = mo({ "hello", "--name" })
      assert.equal(2, r.code)
      assert.equal("moonops: --name needs a value\n", r.stderr)
      assert.equal(2, mo({ "hello", "--name", "--loud" }).code)
      assert.equal(2, mo({ "hello", "--loud=maybe" }).code)
      T.write(dir .. "/n.lua", [[return { options = { { "n", type = "integer" } }, run = function() end }]])
      local n = mo({ "run", "n.lua", "--n", "1.5" })
      assert.equal(2, n.code)
      assert.equal("moonops: --n needs a whole number, got \"1.5\"\n", n.stderr)
    end)

    it("a recipe with a syntax error names file:line in one line and exits 1", function()
      recipe(dir .. "/recipes/broken.lua", "return {\n  summary = 'x',\n  run = function( end\n}\n")
      for _, args in ipairs({ { "broken" }, { "run", "recipes/broken.lua" }, { "help", "broken" } }) do
        local r = mo(args)
        assert.equal(1, r.code, table.concat(args, " "))
        assert.is_true(one_line(r.stderr), r.stderr)
        assert.matches("^moonops: recipes/broken%.lua:3: ", r.stderr)
      end
    end)

    it("a recipe that raises prints one line without a traceback and exits 1", function()
      recipe(dir .. "/recipes/boom.lua", [[
        return { run = function()
          local t = nil
          return t.field
        end }
      ]])
      local r = mo({ "boom" })
      assert.equal(1, r.code)
      assert.is_true(one_line(r.stderr), r.stderr)
      assert.matches("^moonops: recipes/boom%.lua:3: attempt to index a nil value", r.stderr)
      assert.is_nil(r.stderr:find("traceback", 1, true))
      local dbg = mo({ "--debug", "boom" })
      assert.equal(1, dbg.code)
      assert.matches("^moonops: recipes/boom%.lua:3: [^\n]+\nstack traceback:\n", dbg.stderr)
      assert.matches("recipes/boom%.lua:3: in ", dbg.stderr)
    end)

    it("a file that is not a recipe is reported", function()
      T.write(dir .. "/notrecipe.lua", "return 42")
      local r = mo({ "run", "notrecipe.lua" })
      assert.equal(1, r.code)
      assert.equal("moonops: notrecipe.lua: a recipe must return a table (got number)\n", r.stderr)
      local missing = mo({ "run", "missing.lua" })
      assert.equal(1, missing.code)
      assert.is_true(one_line(missing.stderr))
      assert.equal(2, mo({ "run" }).code)
    end)
  end)
end)
