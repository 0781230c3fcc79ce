"""Client keep-alive, upstream connection reuse, pipelining, Connection: close."""
import time
import unittest

from harness import Client, MoxyTestCase, build_request, pattern, request, sha, simple_config


class UpstreamReuse(MoxyTestCase):
    """Each test gets its own origin and moxy so connection counts are exact."""

    def setUp(self):
        super().setUp()
        self.origin = self.start_origin()
        self.moxy = self.start_moxy(simple_config(self.origin.port))

    def test_100_sequential_requests_one_upstream_connection(self):
        with Client(self.moxy.port) as c:
            for i in range(100):
                body = pattern(i * 10) if i % 3 == 0 else None
                r = c.request("POST" if body is not None else "GET", f"/echo?i={i}", body=body)
                self.assert_status(r, 200, self.moxy)
                self.assertEqual(r.json()["target"], f"/echo?i={i}")
        self.assertEqual(len(self.origin.requests), 100)
        self.assertEqual(self.origin.connections, 1)

    def test_upstream_reused_across_client_connections(self):
        for i in range(10):
            self.assert_status(request(self.moxy.port, "GET", f"/echo?c={i}"), 200, self.moxy)
        self.assertLessEqual(self.origin.connections, 3, "upstream connections are not pooled")


class KeepAlive(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        cls.origin = cls.class_origin()
        cls.moxy = cls.class_moxy(simple_config(cls.origin.port))

    def test_pipelined_requests_answered_in_order(self):
        with Client(self.moxy.port) as c:
            c.send(build_request("GET", "/echo?p=1") + build_request("POST", "/echo?p=2", body=b"abc")
                   + build_request("GET", "/bytes?n=70000") + build_request("GET", "/echo?p=4"))
            r1, r2, r3, r4 = (c.response() for _ in range(4))
        self.assertEqual([r.status for r in (r1, r2, r3, r4)], [200] * 4)
        self.assertEqual(r1.json()["target"], "/echo?p=1")
        self.assertEqual((r2.json()["target"], r2.json()["body_sha256"]), ("/echo?p=2", sha(b"abc")))
        self.assertEqual(r3.body, pattern(70000))
        self.assertEqual(r4.json()["target"], "/echo?p=4")

    def test_mixed_requests_on_one_connection(self):
        with Client(self.moxy.port) as c:
            self.assert_status(c.request("HEAD", "/bytes?n=5"), 200)
            r = c.request("POST", "/echo", body=pattern(3000), chunked=True, chunk_size=1000)
            self.assertEqual(r.json()["body_sha256"], sha(pattern(3000)))
            self.assertEqual(c.request("GET", "/status?code=404").status, 404)
            self.assertEqual(c.request("GET", "/chunked?n=10&size=3").body, pattern(10))
            time.sleep(0.5)                 # idle a little: still open on both sides
            self.assertEqual(c.request("GET", "/echo?last").json()["target"], "/echo?last")

    def test_client_connection_close(self):
        with Client(self.moxy.port) as c:
            r = c.request("GET", "/echo", [("Connection", "close")])
            self.assert_status(r, 200)
            self.assertIn("close", r.header("connection", "").lower())
            self.assert_closed(c, "after Connection: close")

    def test_nothing_after_connection_close_is_served(self):
        """A request pipelined behind "Connection: close" is not served, and the
        connection ends after the first answer, with nothing after it (llhttp's
        strict build calls those bytes an error: no 400 may follow the 200)."""
        with Client(self.moxy.port) as c:
            c.send(build_request("GET", "/echo?first", [("Connection", "close")])
                   + build_request("GET", "/echo?second"))
            r = c.response()
            self.assert_status(r, 200)
            self.assertEqual(r.json()["target"], "/echo?first")
            self.assert_closed(c, "after Connection: close")
        time.sleep(0.1)
        self.assertNotIn("/echo?second", self.origin.targets())

    def test_http10_without_keepalive_closes(self):
        with Client(self.moxy.port) as c:
            r = c.request("GET", "/echo?v10", version="HTTP/1.0")
            self.assert_status(r, 200)
            self.assertEqual(r.json()["target"], "/echo?v10")
            self.assert_closed(c, "after an HTTP/1.0 request")


if __name__ == "__main__":
    unittest.main()
