--- notify-webhook: POST deployment, promotion and image events as JSON to a URL
-- (a Slack incoming webhook, or anything that accepts JSON).
--
--   plugins:
--     - notify-webhook: { url_env: SLACK_WEBHOOK_URL, events: [deployment, promotion] }
--
-- Config: `url` or `url_env` (the URL usually embeds a token, so it is masked in every
-- log line), `events` (default all), `timeout` seconds (default 5), `retries` (default 3,
-- with backoff 0.5 s, 1 s, 2 s ... on network errors, 429 and 5xx).
local json = require "moonops.json"
local log = require "moonops.log"

local M = { name = "notify-webhook", version = "1.0.0" }

local KNOWN = { deployment = true, promotion = true, image = true }

-- JSON payloads carry json.null for absent values.
local function present(v)
  return v ~= nil and v ~= json.null
end

--- The Slack-style one-line text for an event.
function M.text(event, p)
  if event == "deployment" then
    local s = string.format("Deployment %s of %s: %s", tostring(p.id or "?"), tostring(p.workspace or "?"),
      tostring(p.status or "?"))
    if present(p.commit) then s = s .. " (" .. tostring(p.commit):sub(1, 12) .. ")" end
    if present(p.error) then s = s .. " - " .. tostring(p.error) end
    return s
  elseif event == "promotion" then
    local s = string.format("Promotion %s -> %s: %s", tostring(p.from or "?"), tostring(p.to or "?"),
      tostring(p.status or "?"))
    if present(p.commit) then s = s .. " (" .. tostring(p.commit):sub(1, 12) .. ")" end
    return s
  elseif event == "image" then
    return string.format("Image %s: %s%s", tostring(p.image or "?"), tostring(p.status or "?"),
      present(p.digest) and (" " .. tostring(p.digest)) or "")
  end
  return event
end

local function validate(config)
  if type(config) ~= "table" then return nil, "config must be a mapping" end
  for k in pairs(config) do
    if not ({ url = 1, url_env = 1, events = 1, timeout = 1, retries = 1 })[k] then
      return nil, "unknown config key " .. tostring(k) .. " (known: url, url_env, events, timeout, retries)"
    end
  end
  local url = config.url
  if config.url_env then
    url = os.getenv(config.url_env)
    if not url or url == "" then return nil, "environment variable " .. config.url_env .. " is not set" end
  end
  if type(url) ~= "string" or not url:match("^https?://") then
    return nil, "needs url or url_env naming an http(s) URL"
  end
  local events
  if config.events ~= nil then
    if type(config.events) ~= "table" then return nil, "events must be a list" end
    events = {}
    for _, e in ipairs(config.events) do
      if not KNOWN[e] then return nil, "unknown event " .. tostring(e) .. " (known: deployment, promotion, image)" end
      events[#events + 1] = e
    end
  end
  return { url = url, events = events, timeout = tonumber(config.timeout) or 5,
    retries = math.tointeger(config.retries) or 3 }
end
M.validate = validate

--- Post one event; returns true or nil, message (the URL never appears in it).
function M.post(cfg, event, payload)
  local http = require "moonops.http"
  local proc = require "moonops.proc"
  local body = {}
  for k, v in pairs(payload or {}) do body[k] = v end
  body.event = event
  body.text = M.text(event, payload or {})
  local encoded = json.encode(body)
  local last
  for attempt = 1, cfg.retries + 1 do
    local res, err = http.request({ method = "POST", url = cfg.url, body = encoded, timeout = cfg.timeout,
      headers = { ["content-type"] = "application/json", ["user-agent"] = "moonops-notify-webhook" } })
    if res and res.status < 300 then return true end
    last = res and ("HTTP " .. res.status) or log.mask(tostring(err))
    if res and res.status < 500 and res.status ~= 429 then break end
    if attempt <= cfg.retries then proc.sleep(0.5 * 2 ^ (attempt - 1)) end
  end
  return nil, "notify-webhook: " .. event .. " not delivered: " .. last
end

function M.setup(engine, config)
  local cfg, err = validate(config)
  if not cfg then error(err, 0) end
  log.secret(cfg.url)
  engine.register_notifier(cfg.events, function(event, payload)
    local ok, perr = M.post(cfg, event, payload)
    if not ok then error(perr, 0) end
  end)
end

return M
