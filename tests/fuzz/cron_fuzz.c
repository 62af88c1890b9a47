/*
 * libFuzzer target for moonops.cron: the parser and the next-run computation.
 *
 * Input: one control byte (bit 0: UTC instead of local time), four bytes of a
 * start time (seconds since 1970, at most 2106), then the expression text. Local
 * time is Europe/London so daylight-saving changes are crossed.
 *
 * Properties: parse() returns a schedule or a message; next() returns a time
 * strictly later than the start that matches() the schedule, or a message; a
 * second next() from that time is later again.
 */
#include "fuzz_lua.h"

static const char *script =
    "local cron = require 'moonops.cron'\n"
    "local input = ...\n"
    "if #input < 5 then return end\n"
    "local ctl, b1, b2, b3, b4 = input:byte(1, 5)\n"
    "local utc = ctl & 1 == 1\n"
    "local after = ((b1 << 24) | (b2 << 16) | (b3 << 8) | b4) + (ctl >> 1) % 2 * 0.5\n"
    "local expr = input:sub(6)\n"
    "local s, err = cron.parse(expr)\n"
    "if not s then\n"
    "  assert(type(err) == 'string' and #err > 0, 'parse failed without a message')\n"
    "  return\n"
    "end\n"
    "local t, why = cron.next(s, after, utc)\n"
    "if not t then\n"
    "  assert(type(why) == 'string' and why:find('never fires', 1, true), 'next failed: ' .. tostring(why))\n"
    "  return\n"
    "end\n"
    "assert(math.type(t) == 'integer', 'next run is not a whole second')\n"
    "assert(t > after, string.format('next run %d is not after %s', t, after))\n"
    "assert(cron.matches(s, t, utc), string.format('next run %d does not match %q', t, expr))\n"
    "local t2 = cron.next(s, t, utc)\n"
    "assert(t2 == nil or t2 > t, 'a second next run is not later')\n"
    "if t2 then assert(cron.matches(s, t2, utc), 'the second next run does not match') end\n";

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  setenv("TZ", "Europe/London", 1);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_lua_run("cron_fuzz", script, data, size);
  return 0;
}
