std = "lua54"
codes = true
max_line_length = 130
exclude_files = { "build/**", "build-asan/**" }
files["tests/**/*_spec.lua"] = { std = "+busted" }
files["tests/spec"] = { std = "+busted" }
files["tests/integration"] = { std = "+busted" }
