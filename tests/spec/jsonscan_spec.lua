local cjson = require "cjson"
local json = require "moonops.json"
local jsonscan = require "moonops.jsonscan"

local pick = jsonscan.pick

local PUSH = '{"ref":"refs/heads/feature","before":"0000000000000000000000000000000000000000",'
  .. '"after":"4f2c9e1d8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e","deleted":false,'
  .. '"repository":{"full_name":"org/ws","clone_url":"https://example.com/org/ws.git"},'
  .. '"pusher":{"name":"dev"},"head_commit":{"id":"4f2c9e1d8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e",'
  .. '"message":"Update meltano.yml"}}'

-- The value at a dotted path of a decoded document, walking objects only.
local function lookup(doc, path)
  local v = doc
  for seg in (path .. "."):gmatch("(.-)%.") do
    if type(v) ~= "table" or json.is_array(v) then return nil end
    v = v[seg]
    if v == nil then return nil end
  end
  return v
end

local function kind_of(v)
  if v == json.null then return "null" end
  if type(v) == "table" then return json.is_array(v) and "array" or "object" end
  return type(v)
end

-- An RFC 8259 number, the whole of `s`.
local function strict_number(s)
  local rest = s:match("^%-?(.*)$")
  rest = rest:match("^0(.*)$") or rest:match("^[1-9]%d*(.*)$")
  if not rest then return false end
  rest = rest:match("^%.%d+(.*)$") or rest
  rest = rest:match("^[eE][+-]?%d+(.*)$") or rest
  return rest == ""
end

-- When lua-cjson takes a text that pick refuses, the refusal must be one of the
-- places where pick keeps to RFC 8259 and cjson does not.
local function stricter_than_cjson(text, err)
  local what, at = err:match("^invalid JSON: (.-) at byte (%d+)$")
  if not what then return false end
  local c = text:byte(tonumber(at))
  if what == "control character in string" or what == "unexpected data after the value" then
    return c ~= nil and c < 32
  end
  if what == "invalid number" or what == "expected a value" then
    local token = text:match("^[-+.%w]+", tonumber(at))
    return token ~= nil and not strict_number(token)
  end
  return false
end

-- pick against cjson (through moonops.json, which gives whole numbers as integers
-- and tells empty arrays from objects): same verdict, same values and kinds.
local function agree(text, paths)
  local doc, derr = json.decode(text)
  local values, kinds = pick(text, paths)
  if not values then
    local err = kinds
    if err == "payload is not a JSON object" then
      assert(doc ~= nil, "pick: not an object, cjson: " .. tostring(derr))
      assert(kind_of(doc) ~= "object", "pick says not an object: " .. text)
    elseif doc ~= nil then
      assert(stricter_than_cjson(text, err), ("cjson takes %q, pick says %s"):format(text, err))
    end
    return false
  end
  assert(doc ~= nil, ("pick takes %q, cjson says %s"):format(text, tostring(derr)))
  assert.equal("object", kind_of(doc))
  for _, path in ipairs(paths) do
    local want = lookup(doc, path)
    if want == nil then
      assert(kinds[path] == nil and values[path] == nil, ("%s should be absent in %q"):format(path, text))
    else
      assert.equal(kind_of(want), kinds[path], path .. " in " .. text)
      if type(want) == "table" then
        assert.is_nil(values[path])
      else
        assert.equal(want, values[path], path .. " in " .. text)
        assert.equal(math.type(want), math.type(values[path]), path .. " in " .. text)
      end
    end
  end
  return true
end

-- A GitHub push payload of about `size` bytes.
local function github_push(size)
  local function user(login, id)
    local u = { login = login, id = id, node_id = "MDQ6VXNlcj" .. id, avatar_url = "https://avatars.example.com/u/" .. id,
      gravatar_id = "", type = "User", site_admin = false, name = login, email = login .. "@example.com" }
    for _, k in ipairs { "url", "html_url", "followers_url", "following_url", "gists_url", "starred_url",
      "subscriptions_url", "organizations_url", "repos_url", "events_url", "received_events_url" } do
      u[k] = "https://api.example.com/users/" .. login .. "/" .. k
    end
    return u
  end
  local repo = { id = 123456789, node_id = "R_kgDOH1", name = "ws", full_name = "org/ws", private = true,
    owner = user("org", 1000), description = "Meltano project \"ws\" \u{2014} dev", fork = false,
    created_at = 1700000000, updated_at = "2024-01-01T00:00:00Z", pushed_at = 1700000500,
    clone_url = "https://example.com/org/ws.git", size = 4096, stargazers_count = 3, watchers_count = 3,
    language = "Python", has_issues = true, has_projects = false, open_issues_count = 0,
    license = json.null, topics = json.array { "meltano", "dataops" }, visibility = "private",
    default_branch = "main", master_branch = "main", organization = "org" }
  for _, k in ipairs { "html_url", "url", "forks_url", "keys_url", "collaborators_url", "teams_url", "hooks_url",
    "issue_events_url", "events_url", "assignees_url", "branches_url", "tags_url", "blobs_url", "git_tags_url",
    "git_refs_url", "trees_url", "statuses_url", "languages_url", "stargazers_url", "contributors_url",
    "subscribers_url", "subscription_url", "commits_url", "git_commits_url", "comments_url", "compare_url",
    "merges_url", "archive_url", "downloads_url", "issues_url", "pulls_url", "milestones_url",
    "notifications_url", "labels_url", "releases_url", "deployments_url" } do
    repo[k] = "https://api.example.com/repos/org/ws/" .. k .. "{/sha}"
  end
  local payload = { ref = "refs/heads/main", before = string.rep("0", 40),
    after = "4f2c9e1d8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e", repository = repo,
    pusher = { name = "dev", email = "dev@example.com" }, sender = user("dev", 2000),
    created = false, deleted = false, forced = false, base_ref = json.null,
    compare = "https://example.com/org/ws/compare/000000000000...4f2c9e1d8b7a", commits = json.array() }
  local n = 0
  repeat
    n = n + 1
    local id = string.format("%040x", n * 7919)
    local commit = { id = id, tree_id = string.format("%040x", n * 104729), distinct = true,
      message = "Update meltano.yml (" .. n .. ")\n\nTAP_GITHUB__SELECT now lists \"issues.*\"",
      timestamp = "2024-01-01T00:00:0" .. (n % 10) .. "+00:00", url = "https://example.com/org/ws/commit/" .. id,
      author = { name = "Dev Éloïse", email = "dev@example.com", username = "dev" },
      committer = { name = "GitHub", email = "noreply@example.com", username = "web-flow" },
      added = json.array { "extract/tap-" .. n .. ".yml" }, removed = json.array(),
      modified = json.array { "meltano.yml", "transform/models/m" .. n .. ".sql" } }
    payload.commits[n] = commit
    payload.head_commit = commit
  until #json.encode(payload) >= size
  return json.encode(payload)
end

-- Random JSON from a seeded generator: texts with whitespace, escapes and numbers
-- of every form, keys from a small pool so paths repeat and keys collide.
local function generator(seed)
  local state = seed
  local function rand(n) -- 1..n, a small LCG so every run sees the same documents
    state = (state * 1103515245 + 12345) % 2147483648
    return state % n + 1
  end
  local spaces = { "", "", "", " ", "\n", "\t", "\r\n  " }
  local function ws() return spaces[rand(#spaces)] end
  -- key text as written, and as decoded
  local keys = { { "a", "a" }, { "b", "b" }, { "ref", "ref" }, { "repository", "repository" }, { "\\u0061", "a" },
    { "full_name", "full_name" }, { "x.y", "x.y" }, { "", "" }, { "\\u00e9t\\u00e9", "été" }, { "été", "été" },
    { "r\\/s", "r/s" }, { "1", "1" } }
  local pieces = { "plain", "with space", "\\n", "\\t", "\\\"", "\\\\", "\\/", "\\b", "\\f", "\\r", "\\u0041",
    "\\u00e9", "\\u20ac", "\\uD83D\\uDE00", "\\u0000", "é", "\u{1F600}", "\127" }
  local numbers = { "0", "-0", "7", "-42", "1.5", "-0.25", "1e3", "2E-2", "6.02e+23", "9007199254740993",
    "123456789012345", "1234567890123456", "-9223372036854775808", "18446744073709551616", "1e400",
    "-1e400", "1e-400", "0.1", "100.0", "3.0e1" }
  local function str()
    local out = {}
    for i = 1, rand(4) - 1 do out[i] = pieces[rand(#pieces)] end
    return '"' .. table.concat(out) .. '"'
  end
  local value
  local function object(depth, prefix, paths)
    local out = {}
    for i = 1, rand(5) - 1 do
      local k = keys[rand(#keys)]
      local path = prefix and prefix .. "." .. k[2] or k[2]
      paths[#paths + 1] = path
      out[i] = ws() .. '"' .. k[1] .. '"' .. ws() .. ":" .. ws() .. value(depth + 1, path, paths) .. ws()
    end
    return "{" .. (#out > 0 and table.concat(out, ",") or ws()) .. "}"
  end
  function value(depth, prefix, paths)
    local r = rand(depth > 4 and 6 or 9)
    if r == 1 then return str() end
    if r == 2 then return numbers[rand(#numbers)] end
    if r == 3 then return ({ "true", "false", "null" })[rand(3)] end
    if r == 4 then return str() end
    if r == 5 then return numbers[rand(#numbers)] end
    if r == 6 then return '"' .. prefix:gsub("[^%w]", "") .. '"' end
    if r == 7 then
      local out = {}
      for i = 1, rand(4) - 1 do out[i] = ws() .. value(depth + 1, prefix .. ".0", {}) .. ws() end
      return "[" .. table.concat(out, ",") .. "]"
    end
    return object(depth, prefix, paths)
  end
  local function document()
    local paths = {}
    local text = rand(10) == 1 and value(1, "top", paths) or object(0, nil, paths)
    paths[#paths + 1] = "missing"
    paths[#paths + 1] = "a.missing"
    return ws() .. text .. ws(), paths
  end
  local junk = { ",", "]", "}", ":", '"', "\\", "\0", "\1", "e", ".", "-", "+", "0", "x", " ", "[", "{", "t" }
  local function mutate(text)
    local at = rand(#text + 1)
    local r = rand(4)
    if r == 1 then return text:sub(1, at - 1) end
    if r == 2 then return text:sub(1, at - 1) .. text:sub(at + 1) end
    if r == 3 then return text:sub(1, at - 1) .. junk[rand(#junk)] .. text:sub(at) end
    return text:sub(1, at) .. text:sub(at)
  end
  return { document = document, mutate = mutate }
end

describe("moonops.jsonscan.pick", function()
  it("picks the fields a push webhook needs, and nothing else", function()
    local values, kinds = pick(PUSH, { "ref", "after", "deleted", "repository.full_name", "repository.clone_url",
      "project.path_with_namespace" })
    assert.same({ ref = "refs/heads/feature", after = "4f2c9e1d8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e", deleted = false,
      ["repository.full_name"] = "org/ws", ["repository.clone_url"] = "https://example.com/org/ws.git" }, values)
    assert.same({ ref = "string", after = "string", deleted = "boolean", ["repository.full_name"] = "string",
      ["repository.clone_url"] = "string" }, kinds)
  end)

  it("gives every JSON type, objects and arrays by kind only", function()
    local text = '{"s":"x","i":42,"f":2.5,"t":true,"b":false,"n":null,"o":{"k":1},"a":[1,{"k":2}],"e":{},"ea":[]}'
    local paths = { "s", "i", "f", "t", "b", "n", "o", "a", "e", "ea", "o.k", "a.k", "a.1", "s.k" }
    local values, kinds = pick(text, paths)
    assert.same({ s = "string", i = "number", f = "number", t = "boolean", b = "boolean", n = "null",
      o = "object", a = "array", e = "object", ea = "array", ["o.k"] = "number" }, kinds)
    assert.equal("x", values.s)
    assert.equal(42, values.i)
    assert.equal("integer", math.type(values.i))
    assert.equal(2.5, values.f)
    assert.is_true(values.t)
    assert.is_false(values.b)
    assert.equal(cjson.null, values.n)
    assert.equal(json.null, values.n)
    assert.equal(jsonscan.null, values.n)
    assert.is_nil(values.o)
    assert.is_nil(values.a)
    assert.is_nil(values["a.k"]) -- paths do not go into arrays
    assert.equal(1, values["o.k"])
  end)

  it("leaves paths that are not there out of both tables", function()
    local values, kinds = pick('{"a":{"b":{"c":"deep"}},"x":1}', { "a.b.c", "a.b.d", "a.c", "nope", "x.y", "a.b.c.d" })
    assert.same({ ["a.b.c"] = "deep" }, values)
    assert.same({ ["a.b.c"] = "string" }, kinds)
    values, kinds = pick("{}", {})
    assert.same({}, values)
    assert.same({}, kinds)
  end)

  it("decodes every string escape as cjson does", function()
    local text = [[{"e":"q\" b\\ s\/ \b\f\n\r\t","u":"\u0041\u00e9\u20AC\ud83d\ude00","z":"a\u0000b",]]
      .. [["raw":"é ✓ \u007f","k\u0065y":1}]]
    local values = pick(text, { "e", "u", "z", "raw", "key" })
    assert.equal('q" b\\ s/ \b\f\n\r\t', values.e)
    assert.equal("Aé€\u{1F600}", values.u)
    assert.equal("a\0b", values.z)
    assert.equal("é ✓ \127", values.raw)
    assert.equal(1, values.key) -- keys are decoded too
    local doc = cjson.decode(text)
    for _, k in ipairs { "e", "u", "z", "raw" } do assert.equal(doc[k], values[k]) end
  end)

  it("refuses invalid escapes and lone surrogates as cjson does", function()
    for _, bad in ipairs { [["\x"]], [["\U00e9"]], [["\u00g0"]], [["\u12"]], [["\ud83d"]], [["\ude00"]],
      [["\ud83d\u0041"]], [["\ud83dx"]], [["\ud83d\ud83d"]], [["\']] } do
      local text = '{"s":' .. bad .. "}"
      assert.has_error(function() cjson.decode(text) end)
      local values, err = pick(text, { "s" })
      assert.is_nil(values)
      assert.matches("^invalid JSON: invalid %a* ?escape at byte 7$", err)
    end
  end)

  it("reads numbers as cjson does, whole ones up to 2^53 as integers", function()
    local cases = {
      { "0", 0 }, { "-0", 0 }, { "17", 17 }, { "-42", -42 }, { "1.5", 1.5 }, { "-0.25", -0.25 },
      { "1e3", 1000 }, { "2E-2", 0.02 }, { "6.02e+23", 6.02e23 }, { "100.0", 100 },
      { "123456789012345", 123456789012345 }, { "9007199254740992", 9007199254740992 },
      { "9007199254740993", 9007199254740992 }, { "9007199254740994", 9007199254740994.0 }, { "9223372036854775807", 2.0 ^ 63 },
      { "-9223372036854775809", -(2.0 ^ 63) }, { "18446744073709551616", 2.0 ^ 64 },
      { "1e400", math.huge }, { "-1e400", -math.huge }, { "1e-400", 0 },
    }
    for _, case in ipairs(cases) do
      local text, want = case[1], case[2]
      local values = assert(pick('{"n":' .. text .. "}", { "n" }))
      assert.equal(want, values.n, text)
      assert.equal(math.type(want), math.type(values.n), text)
      assert.equal(cjson.decode("[" .. text .. "]")[1], values.n, text) -- same value as cjson
    end
  end)

  it("lets the last of duplicate keys win, replacing a whole object", function()
    local values, kinds = pick('{"a":1,"b":{"c":1,"d":2},"a":"two","b":{"c":3},"\\u0061":"three"}',
      { "a", "b.c", "b.d", "b" })
    assert.same({ a = "three", ["b.c"] = 3 }, values)
    assert.same({ a = "string", b = "object", ["b.c"] = "number" }, kinds)
    values, kinds = pick('{"r":{"full_name":"x"},"r":"flat"}', { "r", "r.full_name" })
    assert.same({ r = "flat" }, values)
    assert.same({ r = "string" }, kinds)
  end)

  it("answers a path once however often it is asked, and takes keys with dots as written", function()
    local values = pick('{"a":{"b":1},"a.b":2}', { "a.b", "a.b", "a" })
    assert.same({ ["a.b"] = 1 }, values)
    values = pick('{"":{"":"empty"}}', { ".", "" })
    assert.same({ ["."] = "empty" }, values)
  end)

  it("takes whitespace around every token, and only JSON's four kinds", function()
    local values = assert(pick(' \t\r\n{ "a" :\n[ 1 , 2 ] ,\t"b"\r:\r"x" } \n', { "a", "b" }))
    assert.same({ b = "x" }, values)
    assert.same({ nil, "invalid JSON: expected a value at byte 6" }, { pick('{"a":\f1}', {}) })
    assert.same({ nil, "invalid JSON: unexpected data after the value at byte 8" }, { pick('{"a":1}\v', {}) })
  end)

  it("refuses each kind of invalid text with where it went wrong", function()
    local cases = {
      { "", "unexpected end of input at byte 1" },
      { "   ", "unexpected end of input at byte 4" },
      { '{"a":1', "unexpected end of input at byte 7" },
      { '{"a":', "unexpected end of input at byte 6" },
      { '{"a"', "unexpected end of input at byte 5" },
      { '{"a":1,}', "expected a string as object key at byte 8" },
      { '{"a":[1,2,]}', "expected a value at byte 11" },
      { "{,}", "expected a string as object key at byte 2" },
      { '{"a":1,,"b":2}', "expected a string as object key at byte 8" },
      { '{"a" 1}', "expected ':' at byte 6" },
      { '{"a":1 "b":2}', "expected ',' or '}' at byte 8" },
      { '{"a":[1 2]}', "expected ',' or ']' at byte 9" },
      { '{"a":1}x', "unexpected data after the value at byte 8" },
      { '{"a":1}{}', "unexpected data after the value at byte 8" },
      { '{"a":1} // comment', "unexpected data after the value at byte 9" },
      { '{"a":1}\0', "unexpected data after the value at byte 8" },
      { '{/*c*/"a":1}', "expected a string as object key at byte 2" },
      { "{a:1}", "expected a string as object key at byte 2" },
      { "{'a':1}", "expected a string as object key at byte 2" },
      { '{"a":01}', "invalid number at byte 6" },
      { '{"a":-01}', "invalid number at byte 6" },
      { '{"a":1.}', "invalid number at byte 6" },
      { '{"a":-.5}', "invalid number at byte 6" },
      { '{"a":.5}', "invalid number at byte 6" },
      { '{"a":+1}', "invalid number at byte 6" },
      { '{"a":0x10}', "invalid number at byte 6" },
      { '{"a":1e}', "invalid number at byte 6" },
      { '{"a":1e+}', "invalid number at byte 6" },
      { '{"a":-}', "invalid number at byte 6" },
      { '{"a":NaN}', "expected a value at byte 6" },
      { '{"a":Infinity}', "expected a value at byte 6" },
      { '{"a":tru}', "expected a value at byte 6" },
      { '{"a":nul', "expected a value at byte 6" },
      { '{"a":True}', "expected a value at byte 6" },
      { '{"a":"x\ty"}', "control character in string at byte 8" },
      { '{"a":"line\nbreak"}', "control character in string at byte 11" },
      { '{"a":"x\0y"}', "control character in string at byte 8" },
      { '{"a\1":1}', "control character in string at byte 4" },
      { '{"a":"abc', "unterminated string at byte 6" },
      { '{"a":"abc\\"}', "unterminated string at byte 6" },
      { '{"a', "unterminated string at byte 2" },
    }
    for _, case in ipairs(cases) do
      local values, err = pick(case[1], { "a" })
      assert.is_nil(values, case[1])
      assert.equal("invalid JSON: " .. case[2], err)
    end
  end)

  it("refuses a payload whose top level is not an object, after checking it is JSON", function()
    for _, text in ipairs { "[]", '[{"a":1}]', '"a"', "1", "true", "null", " [ ] " } do
      assert.same({ nil, "payload is not a JSON object" }, { pick(text, { "a" }) })
    end
    assert.same({ nil, "invalid JSON: expected a value at byte 4" }, { pick("[1,]", { "a" }) })
  end)

  it("stops at cjson's nesting limit without recursion", function()
    local function nested(n) return string.rep("[", n) .. string.rep("]", n) end
    assert.is_truthy(pick('{"a":' .. nested(999) .. "}", { "a" }))
    assert.has_no_error(function() cjson.decode('{"a":' .. nested(999) .. "}") end)
    assert.same({ nil, "invalid JSON: nested too deep (more than 1000 levels) at byte 1005" },
      { pick('{"a":' .. nested(1000) .. "}", { "a" }) })
    assert.has_error(function() cjson.decode('{"a":' .. nested(1000) .. "}") end)
    assert.same({ nil, "invalid JSON: nested too deep (more than 1000 levels) at byte 1001" },
      { pick(string.rep("[", 100000), {}) })
    assert.same({ nil, "invalid JSON: nested too deep (more than 1000 levels) at byte 5001" },
      { pick(string.rep('{"a":', 100000), { "a" }) })
    local deep = string.rep('{"a":', 1000) .. "1" .. string.rep("}", 1000)
    local values = assert(pick(deep, { string.rep("a", 999, ".") }))
    assert.equal("object", select(2, pick(deep, { string.rep("a", 999, ".") }))[string.rep("a", 999, ".")])
    assert.is_nil(values[string.rep("a", 999, ".")])
    values = assert(pick(deep, { string.rep("a", 1000, ".") }))
    assert.equal(1, values[string.rep("a", 1000, ".")])
  end)

  it("raises on misuse", function()
    assert.has_error(function() pick(nil, {}) end)
    assert.has_error(function() pick(42, {}) end) -- a number is not JSON text here
    assert.has_error(function() pick("{}") end)
    assert.has_error(function() pick("{}", "a") end)
    local ok, err = pcall(pick, "{}", { "a", 2 })
    assert.is_false(ok)
    assert.matches("bad argument #2 to '.*pick' %(paths%[2%] is a number, not a string%)", err)
    assert.has_error(function() pick("{}", { a = "b" }) end)
    assert.has_error(function() pick("{}", { "a", nil, "c" }) end)
  end)

  it("reads a 20 KB GitHub push payload as cjson does", function()
    local text = github_push(20000)
    assert.is_true(#text >= 20000)
    local paths = { "ref", "after", "before", "deleted", "created", "forced", "base_ref", "compare",
      "repository.full_name", "repository.clone_url", "repository.owner.login", "repository.id",
      "repository.topics", "repository.license", "repository.description", "head_commit.id",
      "head_commit.message", "head_commit.author.name", "commits", "sender.site_admin", "project.path_with_namespace" }
    assert.is_true(agree(text, paths))
    local values = pick(text, paths)
    assert.equal("org/ws", values["repository.full_name"])
    assert.equal(123456789, values["repository.id"])
    assert.equal("Dev Éloïse", values["head_commit.author.name"])
    assert.matches('lists "issues%.%*"$', values["head_commit.message"])
  end)

  it("agrees with cjson on hundreds of generated documents, valid or not", function()
    local gen = generator(20240607)
    local valid, invalid = 0, 0
    for _ = 1, 400 do
      local text, paths = gen.document()
      if agree(text, paths) then valid = valid + 1 else invalid = invalid + 1 end
      for _ = 1, 2 do
        if agree(gen.mutate(text), paths) then valid = valid + 1 else invalid = invalid + 1 end
      end
    end
    -- the generator must exercise both sides
    assert.is_true(valid > 300, "valid " .. valid)
    assert.is_true(invalid > 200, "invalid " .. invalid)
  end)
end)
