-- `moonops init [DIR]`: a moonops.yml with dev, staging and prod workspaces, fresh ids,
-- secrets in 0600 files referenced by secret_file, a promotion chain; never overwrites.
local T = require "support.t"
local json = require "moonops.json"

local function mode(path)
  local out = T.sh("stat -c %a " .. T.q(path))
  return (out:gsub("%s+$", ""))
end

describe("moonops init", function()
  after_each(T.cleanup)

  it("scaffolds three workspaces that moonops.settings accepts", function()
    local dir = T.tmpdir() .. "/analytics"
    local r = T.moonops({ "init", dir })
    assert.are.equal(0, r.code, r.stderr)
    assert.matches("created", r.stdout)
    local text = assert(T.read(dir .. "/moonops.yml"))
    local load = T.moonops({ "lua", "-e", [[
      local s = require("moonops.settings").load(arg[1])
      local out = {}
      for _, ws in ipairs(s.workspaces) do
        out[#out + 1] = { name = ws.name, id = ws.id, environment = ws.environment,
          secrets = require("moonops.settings").workspace_secrets(ws) }
      end
      io.write(require("moonops.json").encode({ workspaces = out, promotion = s.promotion }))
    ]], dir .. "/moonops.yml" })
    assert.are.equal(0, load.code, load.stderr)
    local s = json.decode(load.stdout)
    local names, ids, secrets = {}, {}, {}
    for i, ws in ipairs(s.workspaces) do
      names[i] = ws.name
      assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$", ws.id)
      assert.is_nil(ids[ws.id])
      ids[ws.id] = true
      assert.are.equal(1, #ws.secrets)
      assert.matches("^%x+$", ws.secrets[1])
      assert.are.equal(64, #ws.secrets[1])
      assert.is_nil(secrets[ws.secrets[1]])
      secrets[ws.secrets[1]] = true
      -- never inline
      assert.is_nil(text:find(ws.secrets[1], 1, true))
    end
    assert.are.same({ "analytics-dev", "analytics-staging", "analytics" }, names)
    assert.are.same({ "dev", "staging", "prod" },
      { s.workspaces[1].environment, s.workspaces[2].environment, s.workspaces[3].environment })
    assert.are.same(names, s.promotion)
    for _, n in ipairs(names) do
      assert.are.equal("600", mode(dir .. "/secrets/" .. n .. ".secret"))
    end
    assert.are.equal("700", mode(dir .. "/secrets"))
    assert.matches("secrets/", T.read(dir .. "/.gitignore"), 1, true)
  end)

  it("gives fresh ids and secrets on every run", function()
    local a, b = T.tmpdir(), T.tmpdir()
    assert.are.equal(0, T.moonops({ "init", a, "--name", "x" }).code)
    assert.are.equal(0, T.moonops({ "init", b, "--name", "x" }).code)
    assert.are_not.equal(T.read(a .. "/moonops.yml"), T.read(b .. "/moonops.yml"))
    assert.are_not.equal(T.read(a .. "/secrets/x.secret"), T.read(b .. "/secrets/x.secret"))
  end)

  it("refuses to overwrite an existing moonops.yml", function()
    local dir = T.tmpdir()
    T.write(dir .. "/moonops.yml", "data_dir: keep\n")
    local r = T.moonops({ "init" }, { cwd = dir })
    assert.are.equal(1, r.code)
    assert.matches("already exists", r.stderr)
    assert.are.equal("data_dir: keep\n", T.read(dir .. "/moonops.yml"))
    assert.is_nil(T.read(dir .. "/.gitignore"))
    -- an existing secret file is not overwritten either, and nothing else is written
    local other = T.tmpdir()
    T.write(other .. "/secrets/x-staging.secret", "mine\n")
    r = T.moonops({ "init", other, "--name", "x" })
    assert.are.equal(1, r.code)
    assert.matches("x%-staging%.secret already exists", r.stderr)
    assert.are.equal("mine\n", T.read(other .. "/secrets/x-staging.secret"))
    assert.is_nil(T.read(other .. "/secrets/x-dev.secret"))
    assert.is_nil(T.read(other .. "/moonops.yml"))
  end)

  it("reports as JSON, with the repository base and an existing .gitignore kept", function()
    local dir = T.tmpdir()
    T.write(dir .. "/.gitignore", "*.pyc")
    local r = T.moonops({ "init", dir, "--name", "Acme Data", "--repository-base", "git://127.0.0.1:9/", "--json" })
    assert.are.equal(0, r.code, r.stderr)
    local out = json.decode(r.stdout)
    assert.are.equal("acme-data", out.workspaces[3].name)
    assert.are.equal("git://127.0.0.1:9/acme-data-dev.git", out.workspaces[1].repository)
    assert.are.equal("*.pyc\nsecrets/\n.moonops/\n", T.read(dir .. "/.gitignore"))
    -- too many arguments
    r = T.moonops({ "init", dir, "extra" })
    assert.are.equal(2, r.code)
  end)
end)
