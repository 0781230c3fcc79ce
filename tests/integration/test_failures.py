"""Upstream failures map to 502/504, are logged with the upstream address,
never hang the client, and never stop moxy from serving the next client."""
import time
import unittest

from harness import SLOW, Client, MoxyTestCase, build_request, config, free_port, pattern, service, upstream

READ_TIMEOUT = 1


class Failures(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        cls.origin = cls.class_origin()
        cls.dead_port = free_port()          # nothing listens here
        cls.dead_listen = free_port()
        cls.moxy = cls.class_moxy(config(
            [service("web", free_port()), service("dead", cls.dead_listen, "dead")],
            {"origin": upstream(cls.origin.port, read_timeout=READ_TIMEOUT),
             "dead": upstream(cls.dead_port)}))

    def tearDown(self):
        super().tearDown()
        with Client(self.moxy.port) as c:        # every failure leaves moxy serving
            self.assert_status(c.request("GET", "/echo?still-serving"), 200)

    def check_5xx_logged(self, target, status, addr, port=None):
        since = self.moxy.log_size()
        t0 = time.monotonic()
        with Client(port or self.moxy.port) as c:
            r = c.request("GET", target)
        elapsed = time.monotonic() - t0
        self.assert_status(r, status)
        self.assertTrue(self.moxy.wait_log(addr, since),
                        f"error log does not mention {addr} after the {status}\n{self.moxy.diagnostics()}")
        return elapsed

    def test_origin_down_502(self):
        self.check_5xx_logged("/echo", 502, f"127.0.0.1:{self.dead_port}", self.dead_listen)

    def test_origin_slow_504(self):
        elapsed = self.check_5xx_logged("/slow?ms=4000", 504, self.origin.addr)
        self.assertLess(elapsed, READ_TIMEOUT + 1.5 * SLOW)

    def test_close_before_headers_502(self):
        self.check_5xx_logged("/close-before-headers", 502, self.origin.addr)

    def test_bad_content_length_from_origin_502(self):
        self.check_5xx_logged("/bad-cl", 502, self.origin.addr)

    def test_close_mid_body_truncates(self):
        with Client(self.moxy.port) as c:
            c.send(build_request("GET", "/close-mid-body"))
            r = c.response(partial_ok=True)      # a hang raises socket.timeout
            self.assert_status(r, 200)
            self.assertFalse(r.complete, "a truncated body was presented as complete")
            self.assertLess(len(r.body), 100000)
            self.assertEqual(r.body, pattern(100000)[:len(r.body)])
            self.assert_closed(c, "after a truncated upstream body")

    def test_client_aborts_mid_request_body(self):
        for _ in range(3):
            with Client(self.moxy.port) as c:
                c.send(build_request("POST", "/echo", [("Content-Length", str(1 << 20))]))
                c.send(pattern(100 * 1024))
            with Client(self.moxy.port) as c:
                self.assert_status(c.request("GET", "/echo?next"), 200)
        self.assertNotIn(1 << 20, [r["body_len"] for r in self.origin.requests])


if __name__ == "__main__":
    unittest.main()
