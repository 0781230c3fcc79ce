-- moxy.timer under moxy.test: the clock drives timers, in time order.
local t = require "moxy.test"
local moxy = require "moxy"


describe("moxy.timer (fake engine)", function()
    it("at runs once when the clock passes its due time, with its arguments", function()
        local clock = t.clock(1000)
        local seen = {}
        moxy.timer.at(5, function(premature, a, b) seen[#seen + 1] = { premature, a, b,
                                                                        moxy.now() } end, "x", 2)
        clock:advance(4.9)
        assert.same({}, seen)
        clock:advance(0.2)
        assert.same({ { false, "x", 2, 1005 } }, seen)
        clock:advance(100)
        assert.equal(1, #seen)
    end)

    it("every repeats at its interval and cancel stops it", function()
        local clock = t.clock(0)
        local times = {}
        local h = moxy.timer.every(2, function() times[#times + 1] = moxy.now() end)
        clock:advance(7)
        assert.same({ 2, 4, 6 }, times)
        assert.is_true(h:cancel())
        clock:advance(10)
        assert.same({ 2, 4, 6 }, times)
        assert.same({ nil, "not found" }, { h:cancel() })
    end)

    it("runs timers in time order across one advance", function()
        local clock = t.clock(0)
        local order = {}
        moxy.timer.at(3, function() order[#order + 1] = "b" end)
        moxy.timer.at(1, function() order[#order + 1] = "a" end)
        moxy.timer.every(2.5, function() order[#order + 1] = "e" end)
        clock:advance(5)
        assert.same({ "a", "e", "b", "e" }, order)
    end)

    it("refuses bad arguments", function()
        assert.has_error(function() moxy.timer.at(-1, function() end) end)
        assert.has_error(function() moxy.timer.every(0, function() end) end)
        assert.has_error(function() moxy.timer.at(1, "nope") end)
    end)
end)
