"""The Lua side's FFI cdefs must match the C prototypes of the moxy_* ABI
(LUA_API.md: a spec checks the Lua cdefs against the C side). A mismatch would
call into the binary with the wrong signature, silently."""
import os
import re
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO = re.compile(r"^(?:const char \*|int|double|void|size_t|void \*)\s*\**\s*moxy_\w+\([^)]*\);", re.M)


def prototypes(path):
    with open(os.path.join(REPO, path)) as f:
        text = f.read()
    out = {}
    for m in PROTO.finditer(text):
        p = " ".join(m.group(0).split()).replace("moxy_str_t", "mx_str_t")
        p = p.replace("( ", "(").replace(" )", ")").replace("* ", "*")
        out[re.search(r"moxy_\w+", p).group(0)] = p
    return out


class Abi(unittest.TestCase):
    def check(self, c_files, lua_files):
        c, lua = {}, {}
        for f in c_files:
            c.update(prototypes(f))
        for f in lua_files:
            lua.update(prototypes(f))
        self.assertTrue(lua, "no cdefs found")
        for name, proto in lua.items():
            self.assertIn(name, c, f"{name} is declared in Lua but not exported by C")
            self.assertEqual(proto, c[name], f"{name}: Lua and C disagree")

    def test_session_abi(self):
        self.check(["src/lua/ffi/api.c", "src/lua/task.c"], ["lua/moxy/live.lua"])

    def test_tcp_abi(self):
        self.check(["src/lua/ffi/tcp.c"], ["lua/moxy/tcp_live.lua"])

    def test_shared_dict_abi(self):
        self.check(["src/lua/ffi/shdict_api.c"], ["lua/moxy/shared.lua"])
    def test_lb_abi(self):
        self.check(["src/lua/ffi/lb_api.c"], ["lua/moxy/lb_live.lua"])
