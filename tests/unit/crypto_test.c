/* Known-answer tests for moonops.crypto, through its Lua API. */
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "moonops/moonops.h"

static int failures;

/* Run a Lua chunk that returns one string and compare it with `want`. */
static void check(lua_State *L, const char *what, const char *code, const char *want) {
  const char *got = NULL;
  if (luaL_dostring(L, code) != LUA_OK) {
    fprintf(stderr, "FAIL %s: %s\n", what, lua_tostring(L, -1));
    failures++;
  } else if ((got = lua_tostring(L, -1)) == NULL || strcmp(got, want) != 0) {
    fprintf(stderr, "FAIL %s:\n  got  %s\n  want %s\n", what, got ? got : "(not a string)", want);
    failures++;
  } else {
    printf("ok   %s\n", what);
  }
  lua_settop(L, 0);
}

int main(void) {
  lua_State *L = moonops_vm_new();
  if (L == NULL) return 1;
  if (luaL_dostring(L, "crypto = require 'moonops.crypto'") != LUA_OK) {
    fprintf(stderr, "cannot load moonops.crypto: %s\n", lua_tostring(L, -1));
    return 1;
  }

  /* GitHub's documented webhook signature example (design §7). */
  check(L, "github webhook vector",
        "return crypto.hmac('sha256', \"It's a Secret to Everybody\", 'Hello, World!')",
        "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17");

  /* RFC 4231 HMAC-SHA256 test cases 1-4, 6 and 7 (case 5 is a truncated MAC). */
  check(L, "rfc4231 case 1", "return crypto.hmac('sha256', ('\\x0b'):rep(20), 'Hi There')",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  check(L, "rfc4231 case 2", "return crypto.hmac('sha256', 'Jefe', 'what do ya want for nothing?')",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  check(L, "rfc4231 case 3", "return crypto.hmac('sha256', ('\\xaa'):rep(20), ('\\xdd'):rep(50))",
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
  check(L, "rfc4231 case 4",
        "local k = {} for i = 1, 25 do k[i] = string.char(i) end "
        "return crypto.hmac('sha256', table.concat(k), ('\\xcd'):rep(50))",
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
  check(L, "rfc4231 case 6",
        "return crypto.hmac('sha256', ('\\xaa'):rep(131), "
        "'Test Using Larger Than Block-Size Key - Hash Key First')",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  check(L, "rfc4231 case 7",
        "return crypto.hmac('sha256', ('\\xaa'):rep(131), 'This is a test using a larger than "
        "block-size key and a larger than block-size data. The key needs to be hashed before "
        "being used by the HMAC algorithm.')",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
  check(L, "rfc4231 case 1 sha512", "return crypto.hmac('sha512', ('\\x0b'):rep(20), 'Hi There')",
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854");
  check(L, "rfc2202 hmac-sha1 case 1", "return crypto.hmac('sha1', ('\\x0b'):rep(20), 'Hi There')",
        "b617318655057264e28bc0b6fb378c8ef146be00");

  /* FIPS 180 examples. */
  check(L, "sha1 abc", "return crypto.digest('sha1', 'abc')",
        "a9993e364706816aba3e25717850c26c9cd0d89d");
  check(L, "sha1 empty", "return crypto.digest('sha1', '')",
        "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  check(L, "sha256 abc", "return crypto.digest('sha256', 'abc')",
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  check(L, "sha512 abc", "return crypto.digest('sha512', 'abc')",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f");
  check(L, "sha256 of a million a, streamed",
        "local h = crypto.hasher('sha256') local k = ('a'):rep(1000) "
        "for _ = 1, 1000 do h:update(k) end return h:final()",
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

  /* RFC 4648 section 10. */
  check(L, "base64 vectors",
        "local out = {} for _, s in ipairs{'', 'f', 'fo', 'foo', 'foob', 'fooba', 'foobar'} do "
        "out[#out + 1] = crypto.base64(s) end return table.concat(out, ',')",
        ",Zg==,Zm8=,Zm9v,Zm9vYg==,Zm9vYmE=,Zm9vYmFy");
  check(L, "unbase64 without padding", "return crypto.unbase64('Zm9vYg')", "foob");
  check(L, "hex round trip", "return crypto.hex(crypto.unhex('00ff7F80'))", "00ff7f80");
  check(L, "uuid v4 shape",
        "local u = crypto.uuid() return tostring(u:match("
        "'^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$') ~= nil)",
        "true");
  check(L, "equal",
        "return tostring(crypto.equal('abc', 'abc')) .. tostring(crypto.equal('abc', "
        "'abd')) .. tostring(crypto.equal('abc', 'abcabc')) .. tostring(crypto.equal('', 'x'))",
        "truefalsefalsefalse");

  lua_close(L);
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
