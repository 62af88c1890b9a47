-- busted helper: lets specs `require "support.t"` and friends.
local dir = debug.getinfo(1, "S").source:match("^@(.*)/helper%.lua$") or "tests"
package.path = dir .. "/?.lua;" .. package.path
