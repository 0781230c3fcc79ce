-- The rockspec installs every module of lua/moxy: moxy.test requires most of them, and a
-- module missing from it breaks `require "moxy.test"` in a user's project.
describe("rockspec/moxy-scm-1.rockspec", function()
    local function rockspec_modules()
        local env = {}
        local chunk = assert(loadfile("rockspec/moxy-scm-1.rockspec"))
        setfenv(chunk, env)
        chunk()
        return env.build.modules
    end

    it("lists every file of lua/moxy, under its module name", function()
        local modules = rockspec_modules()
        local p = assert(io.popen("ls lua/moxy"))
        local n = 0
        for file in p:lines() do
            local base = file:match("^(.-)%.lua$")
            if base then
                n = n + 1
                local name = base == "init" and "moxy" or "moxy." .. base
                assert.equal("lua/moxy/" .. file, modules[name], name .. " is not in the rockspec")
            end
        end
        p:close()
        assert.is_true(n > 10)
    end)

    it("lists no module whose file is gone", function()
        for name, path in pairs(rockspec_modules()) do
            local f = io.open(path)
            assert.is_not_nil(f, name .. ": " .. path .. " does not exist")
            f:close()
        end
    end)
end)
