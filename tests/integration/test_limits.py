"""Service limits: oversized header section / too many fields -> 431, long
request line -> 414, body over max_body_bytes -> 413; the connection closes.
Requests just under the limits pass."""
import unittest

from harness import Client, MoxyTestCase, build_request, pattern, sha, simple_config

LIMITS = {"max_header_bytes": 4096, "max_headers": 20, "max_request_line": 1024, "max_body_bytes": 65536}


class Limits(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        cls.origin = cls.class_origin()
        cls.moxy = cls.class_moxy(simple_config(cls.origin.port, service_opts={"limits": LIMITS}))

    def check_refused(self, raw, status):
        nreqs = len(self.origin.requests)
        with Client(self.moxy.port) as c:
            c.send(raw)
            self.assert_status(c.response(), status)
            self.assert_closed(c, f"after {status}")
        self.assertEqual(len(self.origin.requests), nreqs)

    def test_header_bytes_431(self):
        self.check_refused(build_request("GET", "/echo", [("X-Big", "a" * 5000)]), 431)

    def test_too_many_headers_431(self):
        self.check_refused(build_request("GET", "/echo", [(f"X-H{i}", "1") for i in range(30)]), 431)

    def test_request_line_414(self):
        self.check_refused(build_request("GET", "/echo?" + "q" * 1500), 414)

    def test_body_over_limit_413(self):
        self.check_refused(build_request("POST", "/echo", [("Content-Length", "100000")]), 413)

    def test_under_limits_pass(self):
        with Client(self.moxy.port) as c:
            r = c.request("GET", "/echo?" + "q" * 800, [("X-Big", "a" * 2000)] + [(f"X-H{i}", "1") for i in range(10)])
            self.assert_status(r, 200)
            r = c.request("POST", "/echo", body=pattern(60000))
            self.assert_status(r, 200)
            self.assertEqual(r.json()["body_sha256"], sha(pattern(60000)))


if __name__ == "__main__":
    unittest.main()
