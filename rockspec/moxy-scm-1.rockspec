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
        ["moxy.backend"] = "lua/moxy/backend.lua",
        ["moxy.balancer"] = "lua/moxy/balancer.lua",
        ["moxy.engine"] = "lua/moxy/engine.lua",
        ["moxy.fake"] = "lua/moxy/fake.lua",
        ["moxy.http"] = "lua/moxy/http.lua",
        ["moxy.http_client"] = "lua/moxy/http_client.lua",
        ["moxy"] = "lua/moxy/init.lua",
        ["moxy.lb"] = "lua/moxy/lb.lua",
        ["moxy.lb_fake"] = "lua/moxy/lb_fake.lua",
        ["moxy.lb_live"] = "lua/moxy/lb_live.lua",
        ["moxy.live"] = "lua/moxy/live.lua",
        ["moxy.sched"] = "lua/moxy/sched.lua",
        ["moxy.session"] = "lua/moxy/session.lua",
        ["moxy.shared"] = "lua/moxy/shared.lua",
        ["moxy.shared_args"] = "lua/moxy/shared_args.lua",
        ["moxy.shared_fake"] = "lua/moxy/shared_fake.lua",
        ["moxy.tcp"] = "lua/moxy/tcp.lua",
        ["moxy.tcp_fake"] = "lua/moxy/tcp_fake.lua",
        ["moxy.tcp_live"] = "lua/moxy/tcp_live.lua",
        ["moxy.test"] = "lua/moxy/test.lua",
        ["moxy.test_live"] = "lua/moxy/test_live.lua",
        ["moxy.test_origin"] = "lua/moxy/test_origin.lua",
    },
}
test = {
    type = "busted",
}
