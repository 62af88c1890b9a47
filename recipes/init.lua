-- recipes/init.lua: `moonops init [DIR]` - scaffold moonops.yml with dev, staging and prod workspaces.
local errors = require "moonops.errors"

local STAGES = { "dev", "staging", "prod" }

local function quote(s)
  if s:match("^[%w][%w._/:@-]*$") and not s:match(":%s") then return s end
  return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

local function render(base, repositories, ids, secret_files)
  local out = {
    "# moonops.yml - written by `moonops init`. Reference: `moonops help`.",
    "data_dir: .moonops                # state, repository mirrors and releases",
    "server:",
    "  listen: 127.0.0.1:8080",
    "  workers: 2",
    "  api_tokens_env: MOONOPS_API_TOKENS   # comma-separated bearer tokens for the REST API",
    "workspaces:",
  }
  local names = {}
  for i, stage in ipairs(STAGES) do
    local name = stage == "prod" and base or (base .. "-" .. stage)
    names[i] = name
    out[#out + 1] = "  - id: " .. ids[i]
    out[#out + 1] = "    name: " .. quote(name)
    out[#out + 1] = "    repository: " .. quote(repositories[i])
    out[#out + 1] = "    branch: main"
    out[#out + 1] = "    environment: " .. stage
    out[#out + 1] = "    secret_file: " .. quote(secret_files[i]) .. "   # webhook secret (0600); never commit it"
    out[#out + 1] = "    # git_token_env: GITHUB_TOKEN      # for a private HTTPS repository"
    out[#out + 1] = "    # on_deploy:                       # argv lists (no shell) or recipe names, run in the release"
    out[#out + 1] = "    #   - [meltano, install]"
    out[#out + 1] = "    keep_releases: 5"
    out[#out + 1] = "    image: { build_on_deploy: false }"
  end
  local chain = {}
  for i, n in ipairs(names) do chain[i] = quote(n) end
  out[#out + 1] = "promotion: [" .. table.concat(chain, ", ") .. "]   # dev -> staging -> prod"
  return table.concat(out, "\n") .. "\n", names
end

local function ensure_gitignore(fs, dir, lines)
  local path = dir .. "/.gitignore"
  local text = fs.read(path) or ""
  local have = {}
  for l in text:gmatch("[^\n]+") do have[l] = true end
  local add = {}
  for _, l in ipairs(lines) do
    if not have[l] then add[#add + 1] = l end
  end
  if #add == 0 then return false end
  if text ~= "" and not text:match("\n$") then text = text .. "\n" end
  local ok, err = fs.write_atomic(path, text .. table.concat(add, "\n") .. "\n")
  if not ok then errors.raise("write " .. path .. ": " .. tostring(err)) end
  return true
end

return {
  summary = "Scaffold moonops.yml with dev, staging and prod workspaces, fresh ids and secrets",
  usage = "[DIR] [--name NAME] [--repository-base URL] [--json]",
  description = [[
Writes DIR/moonops.yml (DIR defaults to the current directory) with three workspaces
(NAME-dev, NAME-staging, NAME) chained for promotion, each with a fresh UUID and a
random webhook secret written to DIR/secrets/<workspace>.secret (mode 0600) and
referenced by secret_file. An existing moonops.yml is never overwritten.]],
  max_args = 1,
  options = {
    { "name", type = "string", metavar = "NAME", help = "base workspace name (default: the directory's name)" },
    { "repository-base", type = "string", metavar = "URL",
      help = "repositories are URL<workspace>.git (default https://github.com/YourOrg/)" },
    { "json", type = "boolean", help = "print what was created as JSON" },
  },
  examples = { "moonops init", "moonops init ops --name analytics --repository-base git@github.com:acme/" },
  run = function(ctx, opts)
    local crypto = require "moonops.crypto"
    local fs = require "moonops.fs"
    local dir = ctx.args[1] or "."
    local config = dir .. "/moonops.yml"
    if fs.stat(config) then
      errors.raise(config .. " already exists: moonops init never overwrites it (edit it, or init another DIR)")
    end
    local ok, err = fs.mkdirs(dir)
    if not ok then errors.raise("create " .. dir .. ": " .. tostring(err)) end

    local base = opts.name
    if not base then
      local real = fs.realpath(dir) or dir
      base = real:match("([^/]+)/*$") or "my-workspace"
    end
    base = base:lower():gsub("[^%w._-]+", "-"):gsub("^[-._]+", "")
    if base == "" then base = "my-workspace" end
    local repo_base = opts["repository-base"] or "https://github.com/YourOrg/"

    local ids, repositories, secret_files = {}, {}, {}
    for i, stage in ipairs(STAGES) do
      local name = stage == "prod" and base or (base .. "-" .. stage)
      ids[i] = crypto.uuid()
      repositories[i] = repo_base .. name .. ".git"
      secret_files[i] = "secrets/" .. name .. ".secret"
    end
    local text, names = render(base, repositories, ids, secret_files)

    -- Secrets first (0600 in a 0700 directory), so moonops.yml never names a missing file.
    ok, err = fs.mkdirs(dir .. "/secrets", tonumber("700", 8))
    if not ok then errors.raise("create " .. dir .. "/secrets: " .. tostring(err)) end
    for i = 1, #STAGES do
      local path = dir .. "/" .. secret_files[i]
      if fs.stat(path) then errors.raise(path .. " already exists: remove it or init another DIR") end
    end
    for i = 1, #STAGES do
      local path = dir .. "/" .. secret_files[i]
      ok, err = fs.write_atomic(path, crypto.hex(crypto.random(32)) .. "\n", tonumber("600", 8))
      if not ok then errors.raise("write " .. path .. ": " .. tostring(err)) end
    end
    ok, err = fs.write_atomic(config, text)
    if not ok then errors.raise("write " .. config .. ": " .. tostring(err)) end
    local gitignore = ensure_gitignore(fs, dir, { "secrets/", ".moonops/" })

    if opts.json then
      local list = ctx.json.array()
      for i, n in ipairs(names) do
        list[i] = { name = n, id = ids[i], environment = STAGES[i], repository = repositories[i],
          secret_file = secret_files[i] }
      end
      ctx.print(ctx.json.pretty({ config = config, workspaces = list, promotion = ctx.json.array(names),
        gitignore = gitignore }))
      return 0
    end
    ctx.print("created " .. config .. "\n")
    for i, n in ipairs(names) do
      ctx.print(string.format("  workspace %-24s %s  secret in %s\n", n, ids[i], secret_files[i]))
    end
    ctx.print("  promotion " .. table.concat(names, " -> ") .. "\n")
    if gitignore then ctx.print("  .gitignore now ignores secrets/ and .moonops/\n") end
    ctx.print("next: set each repository URL, give each secret to its webhook, then run 'moonops deploy "
      .. names[1] .. "'\n")
    return 0
  end,
}
