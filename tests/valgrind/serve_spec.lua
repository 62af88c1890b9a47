-- `moonops serve` under valgrind: start it, send signed webhooks (one deploys, over
-- libgit2 on the deploy thread), an unsigned one and an API call, then SIGTERM. The
-- server must exit 0 and valgrind must report no error and no definite leak
-- (--error-exitcode=1, so a report turns the exit status into 1).
--
-- Run by the ctest valgrind/serve with MOONOPS_VALGRIND set to the valgrind command.
local T = require "support.t"
local server = require "support.server"

-- without --quiet, so the log ends with the leak and error summaries checked below
local VALGRIND = os.getenv("MOONOPS_VALGRIND") and os.getenv("MOONOPS_VALGRIND"):gsub("%-%-quiet", "")

describe("moonops serve under valgrind", function()
  local s
  after_each(function()
    if s then s.stop() end
    s = nil
    T.cleanup()
  end)

  it("serves webhooks, deploys and stops on SIGTERM with no error and no definite leak", function()
    if not VALGRIND then
      pending("MOONOPS_VALGRIND is not set (the ctest valgrind/serve sets it)")
      return
    end
    s = server.setup()
    local vlog = s.root .. "/valgrind.log"
    s.start({ prefix = VALGRIND .. " --log-file=" .. T.q(vlog) .. " --child-silent-after-fork=yes", timeout = 90 })
    local sha = s.push("smoke.sql", "select 1;\n")
    local status, doc = s.post_push(sha)
    assert.equal(202, status, T.read(s.log))
    assert.equal(401, (s.post_push(sha, { secret = "wrong" })))
    assert.equal(200, (s.request({ path = "/api/workspaces", headers = { Authorization = "Bearer " .. server.TOKEN } })))
    local rows = s.wait_idle(120)
    assert.equal(1, #rows)
    assert.equal("COMPLETE", rows[1].status, rows[1].error)
    assert.equal(doc.id, rows[1].id)
    local pid = s.pid
    local stopped = s.signal_and_wait("TERM", 120)
    assert.truthy(stopped, "serve did not stop on SIGTERM")
    -- the exit status, read back from the shell that started it, is not at hand:
    -- valgrind writes its verdict to the log instead
    local report = T.read(vlog) or ""
    print("\n" .. (report:match("(==%d+== LEAK SUMMARY:.-)\n==%d+== *\n") or report:sub(-600)))
    assert.falsy(report:find("definitely lost: [1-9]"), report)
    assert.falsy(report:find("ERROR SUMMARY: [1-9]"), report)
    assert.falsy(report:find("Invalid read") or report:find("Invalid write") or report:find("uninitialised"), report)
    assert.truthy(report:find("==" .. pid .. "== ERROR SUMMARY: 0 errors", 1, true), "no valgrind verdict:\n" .. report)
  end)
end)
