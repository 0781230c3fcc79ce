rockspec_format = "3.0"
package = "moxy"
version = "scm-1"
source = {
    url = "git+https://example.invalid/moxy.git",
}
description = {
    summary = "Lua API of the moxy reverse proxy: session, test kit and fake engine",
    detailed = [[
        The Lua side of moxy: the `moxy` module, the session objects handlers use, and
        `moxy.test` to run a script's handlers under busted without a server.
    ]],
    license = "MIT",
}
dependencies = {
    "lua == 5.1",           -- LuaJIT 2.1
    "lua-cjson",
}
test_dependencies = {
    "busted",
}
build = {
    type = "builtin",
    modules = {
        ["moxy"] = "lua/moxy/init.lua",
        ["moxy.backend"] = "lua/moxy/backend.lua",
        ["moxy.balancer"] = "lua/moxy/balancer.lua",
        ["moxy.lb"] = "lua/moxy/lb.lua",
        ["moxy.lb_fake"] = "lua/moxy/lb_fake.lua",
        ["moxy.lb_live"] = "lua/moxy/lb_live.lua",
        ["moxy.session"] = "lua/moxy/session.lua",
        ["moxy.fake"] = "lua/moxy/fake.lua",
        ["moxy.test"] = "lua/moxy/test.lua",
    },
}
test = {
    type = "busted",
}
