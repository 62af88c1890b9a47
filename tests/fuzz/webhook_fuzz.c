/*
 * libFuzzer target for moonops.webhook: verification and provider normalisation.
 *
 * Input: one control byte, header lines ("Name: value") up to a blank line, then
 * the raw body. The control byte may ask the harness to sign the body correctly
 * (in X-Hub-Signature-256, X-Gitea-Signature, X-Hub-Signature sha1 or as
 * X-Gitlab-Token), enable legacy sha1, and force a provider.
 *
 * Properties:
 *  - receive() returns an event only when some header carries a valid signature
 *    of this exact body under one of the configured secrets;
 *  - a correctly signed body sent to the provider that reads that header is
 *    never refused with 401;
 *  - refusals are 400, 401 or 404 with a message that holds neither a secret
 *    nor the expected signature;
 *  - an accepted event has the normalised shape and decide() handles it.
 */
#include "fuzz_lua.h"

static const char *script =
    "local webhook = require 'moonops.webhook'\n"
    "local crypto = require 'moonops.crypto'\n"
    "local input = ...\n"
    "if #input < 1 then return end\n"
    "local SECRETS = { 'fuzz-secret-one', 'fuzz secret two' }\n"
    "local ctl = input:byte(1)\n"
    "local rest = input:sub(2)\n"
    "local head, body = rest:match('^(.-)\\n\\n(.*)$')\n"
    "if not head then head, body = rest, '' end\n"
    "local headers = {}\n"
    "for line in head:gmatch('[^\\n]+') do\n"
    "  local k, v = line:match('^([^:]*):%s*(.-)%s*$')\n"
    "  if k then headers[k:lower()] = v end\n"
    "end\n"
    "local secret = SECRETS[(ctl >> 3) % 2 + 1]\n"
    "local signed_with = ctl & 1 == 1 and (ctl >> 1) % 4 or nil\n"
    "if signed_with == 0 then\n"
    "  headers['x-hub-signature-256'] = 'sha256=' .. crypto.hmac('sha256', secret, body)\n"
    "elseif signed_with == 1 then\n"
    "  headers['x-gitea-signature'] = crypto.hmac('sha256', secret, body)\n"
    "elseif signed_with == 2 then\n"
    "  headers['x-hub-signature'] = 'sha1=' .. crypto.hmac('sha1', secret, body)\n"
    "elseif signed_with == 3 then\n"
    "  headers['x-gitlab-token'] = secret\n"
    "end\n"
    "local PROVIDERS = { 'github', 'gitlab', 'gitea', 'forgejo', 'bitbucket', 'no-such-provider' }\n"
    "local opts = { legacy_sha1 = ctl & 16 ~= 0, provider = PROVIDERS[(ctl >> 5) % 8] }\n"
    "\n"
    "local expected = {}\n"
    "for _, s in ipairs(SECRETS) do\n"
    "  expected[#expected + 1] = { s = s, h256 = crypto.hmac('sha256', s, body), h1 = crypto.hmac('sha1', s, body) }\n"
    "end\n"
    "local function hex_ok(v, alg)\n"
    "  if type(v) ~= 'string' then return false end\n"
    "  v = v:lower()\n"
    "  for _, e in ipairs(expected) do\n"
    "    if v == (alg == 'sha1' and e.h1 or e.h256) then return true end\n"
    "  end\n"
    "  return false\n"
    "end\n"
    "local function validly_signed(h)\n"
    "  local v = h['x-hub-signature-256']\n"
    "  if v and hex_ok(v:match('^sha256=(.*)$'), 'sha256') then return true end\n"
    "  v = h['x-hub-signature']\n"
    "  if v and hex_ok(v:match('^sha256=(.*)$'), 'sha256') then return true end\n"
    "  if v and opts.legacy_sha1 and hex_ok(v:match('^sha1=(.*)$'), 'sha1') then return true end\n"
    "  if hex_ok(h['x-gitea-signature'], 'sha256') or hex_ok(h['x-forgejo-signature'], 'sha256') then\n"
    "    return true\n"
    "  end\n"
    "  for _, e in ipairs(expected) do\n"
    "    if h['x-gitlab-token'] == e.s then return true end\n"
    "  end\n"
    "  return false\n"
    "end\n"
    "\n"
    "local copy = {}\n"
    "for k, v in pairs(headers) do copy[k] = v end\n"
    "local event, code, msg = webhook.receive(copy, body, SECRETS, opts)\n"
    "if event == nil then\n"
    "  assert(code == 400 or code == 401 or code == 404, 'unexpected status ' .. tostring(code))\n"
    "  assert(type(msg) == 'string', 'refusal without a message')\n"
    "  for _, e in ipairs(expected) do\n"
    "    assert(not msg:find(e.s, 1, true), 'a secret leaked into: ' .. msg)\n"
    "    assert(not msg:lower():find(e.h256, 1, true) and not msg:lower():find(e.h1, 1, true),\n"
    "      'the expected signature leaked into: ' .. msg)\n"
    "  end\n"
    "  if (signed_with == 0 and opts.provider == 'github') or (signed_with == 3 and opts.provider == 'gitlab') then\n"
    "    assert(code ~= 401, 'a correctly signed delivery was refused: ' .. msg)\n"
    "  end\n"
    "  return\n"
    "end\n"
    "assert(code == nil)\n"
    "assert(validly_signed(headers), 'accepted a delivery without a valid signature')\n"
    "assert(type(event) == 'table' and type(event.provider) == 'string', 'event without a provider')\n"
    "assert(type(event.event) == 'string', 'event without a name')\n"
    "assert(type(event.changes) == 'table', 'event without changes')\n"
    "for _, c in ipairs(event.changes) do\n"
    "  assert(type(c.ref) == 'string', 'change without a ref')\n"
    "  assert(c.after == nil or type(c.after) == 'string', 'after is not a string')\n"
    "end\n"
    "assert(event.ref == (event.changes[1] and event.changes[1].ref), 'ref is not the first change')\n"
    "assert(type(event.deleted) == 'boolean', 'deleted is not a boolean')\n"
    "assert(event.delivery == nil or type(event.delivery) == 'string', 'delivery is not a string')\n"
    "assert(event.repository == nil or type(event.repository) == 'string', 'repository is not a string')\n"
    "local action, detail = webhook.decide(event, 'main')\n"
    "assert(action == 'deploy' or action == 'ping' or action == 'ignore', 'decide: ' .. tostring(action))\n"
    "if action == 'deploy' then assert(detail.ref == 'refs/heads/main' and not detail.deleted) end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_lua_run("webhook_fuzz", script, data, size);
  return 0;
}
