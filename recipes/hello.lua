-- recipes/hello.lua: `moonops hello --name you`
return {
  summary = "Say hello",
  options = {
    { "name", type = "string", default = "world", help = "who to greet" },
    { "loud", type = "boolean", help = "shout" },
  },
  run = function(ctx, opts)
    local greeting = "hello " .. opts.name
    if opts.loud then greeting = greeting:upper() .. "!" end
    ctx.log.info(greeting)
    return 0
  end,
}
