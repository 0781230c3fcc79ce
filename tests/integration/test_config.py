"""Command line and config checking: -t, -V, -h, errors with file:line:col."""
import os
import re
import shutil
import tempfile
import unittest

from harness import MoxyTestCase, free_port, run_moxy, simple_config

BAD_KEY = """version: 1
threads: 1
upstreams:
  origin:
    backends: ["127.0.0.1:{up}"]
services:
  - name: web
    listner: ["127.0.0.1:{port}"]
    upstream: origin
"""


class Config(MoxyTestCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="moxy-conf-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def check_bad(self, text, line, *needles):
        path = self.write("bad.yaml", text)
        p = run_moxy(["-t", "-c", path])
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertRegex(p.stderr, rf"bad\.yaml:{line}:\d+", "error does not name file:line:col")
        for n in needles:
            self.assertIn(n, p.stderr)
        return p

    def test_check_good_config(self):
        p = run_moxy(["-t", "-c", self.write("good.yaml", simple_config(free_port()))])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_check_unknown_key(self):
        p = self.check_bad(BAD_KEY.format(up=free_port(), port=free_port()), 8, "listner")
        col = int(re.search(r"bad\.yaml:8:(\d+)", p.stderr).group(1))
        self.assertIn(col, (4, 5), "column of 'listner' should be 5 (1-based) or 4 (0-based)")

    def test_check_invalid_address(self):
        text = BAD_KEY.format(up=free_port(), port="99999").replace("listner", "listeners")
        self.check_bad(text, 8, "99999", "listeners")

    def test_check_unknown_upstream(self):
        text = BAD_KEY.format(up=free_port(), port=free_port()).replace("listner", "listeners")
        self.check_bad(text.replace("upstream: origin", "upstream: nosuch"), 9, "nosuch")

    def test_check_yaml_syntax_error(self):
        self.check_bad("version: 1\nthreads: [1\nservices: []\n", r"\d+")

    def test_check_missing_file(self):
        p = run_moxy(["-t", "-c", os.path.join(self.dir, "nope.yaml")])
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("nope.yaml", p.stderr)

    def test_start_with_bad_config_fails_fast(self):
        port = free_port()
        p = run_moxy(["-c", self.write("bad.yaml", BAD_KEY.format(up=free_port(), port=port))])
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("listner", p.stderr)

    def test_version(self):
        p = run_moxy(["-V"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout + p.stderr, r"moxy.*\d+\.\d+")

    def test_help(self):
        p = run_moxy(["-h"])
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout + p.stderr
        self.assertRegex(out.lower(), r"usage")
        for flag in ("-c", "-t", "-d", "-V"):
            self.assertIn(flag, out)


if __name__ == "__main__":
    unittest.main()
