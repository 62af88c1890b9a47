/*
 * libFuzzer target for the image reference parser (moonops.registry
 * parse_reference and format_reference).
 *
 * Properties: a reference parses into registry, repository, name, tag and
 * digest of the documented shapes, or fails with a message naming it;
 * formatting a parsed reference and parsing that again gives the same fields.
 */
#include "fuzz_lua.h"

static const char *script =
    "local registry = require 'moonops.registry'\n"
    "local ref = ...\n"
    "local r, err = registry.parse_reference(ref)\n"
    "if not r then\n"
    "  assert(type(err) == 'string' and #err > 0, 'failed without a message')\n"
    "  return\n"
    "end\n"
    "assert(type(r.registry) == 'string' and #r.registry > 0, 'no registry')\n"
    "assert(not r.registry:find('/', 1, true), 'a registry with a slash')\n"
    "assert(type(r.repository) == 'string' and #r.repository > 0, 'no repository')\n"
    "assert(r.name == r.registry .. '/' .. r.repository, 'name is not registry/repository')\n"
    "assert(#r.name <= 255, 'a name over 255 characters')\n"
    "assert(not r.repository:find('[^a-z0-9._/-]'), 'a repository with odd characters: ' .. r.repository)\n"
    "assert(not r.repository:find('//', 1, true) and not r.repository:find('^/') and\n"
    "  not r.repository:find('/$'), 'an empty path component')\n"
    "if r.tag then assert(r.tag:match('^[%w_][%w_.-]*$') and #r.tag <= 128, 'a bad tag') end\n"
    "if r.digest then assert(r.digest:match('^[a-z0-9][a-z0-9+._-]*:[%w=_-]+$'), 'a bad digest') end\n"
    "assert(not (r.tag or ''):find('[%s%c]') and not r.name:find('[%s%c]'), 'whitespace kept')\n"
    "local text = registry.format_reference(r)\n"
    "local again, err2 = registry.parse_reference(text)\n"
    "assert(again, 'cannot parse the formatted reference ' .. text .. ': ' .. tostring(err2))\n"
    "for _, k in ipairs({ 'registry', 'repository', 'name', 'tag', 'digest' }) do\n"
    "  assert(again[k] == r[k], k .. ' changed after formatting: ' .. text)\n"
    "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_lua_run("imageref_fuzz", script, data, size);
  return 0;
}
