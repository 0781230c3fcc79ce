"""Plain proxying: echo, HEAD, hop-by-hop headers, header case/order,
X-Forwarded-For / Via, CONNECT, absolute-form targets, status passthrough."""
import unittest

from harness import Client, MoxyTestCase, config, curl, free_port, service, tokens, upstream

HOP_BY_HOP = ("connection", "keep-alive", "proxy-connection", "te", "x-foo")


class ProxyBasic(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        cls.origin = cls.class_origin()
        cls.plain_port = free_port()
        cls.moxy = cls.class_moxy(config(
            [service("web", free_port()),
             service("plain", cls.plain_port, x_forwarded_for=False, via=False)],
            {"origin": upstream(cls.origin.port)}))

    def echo(self, method="GET", target="/echo", headers=(), body=None, port=None):
        with Client(port or self.moxy.port) as c:
            r = c.request(method, target, headers, body)
        self.assert_status(r, 200)
        return r, r.json()

    def test_get_echo(self):
        r, j = self.echo(target="/echo?x=1&y=%20")
        self.assertEqual((j["method"], j["target"], j["body_len"]), ("GET", "/echo?x=1&y=%20", 0))

    def test_get_via_curl(self):
        r = curl(f"http://127.0.0.1:{self.moxy.port}/echo?curl=1")
        self.assertEqual((r.rc, r.status), (0, 200), r.stderr)
        self.assertIn('"target": "/echo?curl=1"', r.body.decode())

    def test_status_passthrough(self):
        for code in (201, 301, 404, 500, 503):
            with Client(self.moxy.port) as c:
                r = c.request("GET", f"/status?code={code}")
            self.assert_status(r, code)
            self.assertEqual(r.body, f"status {code}".encode())

    def test_head_has_no_body_and_connection_is_reusable(self):
        with Client(self.moxy.port) as c:
            r = c.request("HEAD", "/bytes?n=1000")
            self.assert_status(r, 200)
            self.assertIn(r.header("content-length"), (None, "1000"))
            r = c.request("GET", "/echo?after-head")  # a stray body would corrupt this response
            self.assert_status(r, 200)
            self.assertEqual(r.json()["target"], "/echo?after-head")

    def test_request_hop_by_hop_removed(self):
        _, j = self.echo(headers=[("Connection", "X-Foo"), ("X-Foo", "1"), ("Keep-Alive", "300"),
                                  ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("X-Keep", "yes")])
        names = [n.lower() for n, _ in j["headers"]]
        for h in ("x-foo", "keep-alive", "proxy-connection", "te"):
            self.assertNotIn(h, names, f"hop-by-hop {h} reached the origin: {j['headers']}")
        for n, v in j["headers"]:
            if n.lower() == "connection":
                self.assertNotIn("x-foo", tokens(v))
        self.assertIn(["X-Keep", "yes"], j["headers"])

    def test_response_hop_by_hop_removed(self):
        with Client(self.moxy.port) as c:
            r = c.request("GET", "/headers")
        self.assert_status(r, 200)
        self.assertEqual(r.header("x-end"), "1")
        self.assertIsNone(r.header("x-hop"), r.headers)
        self.assertNotIn("timeout=5", r.header_all("keep-alive"))
        self.assertNotIn("x-hop", tokens(",".join(r.header_all("connection"))))
        self.assertEqual(r.body, b"ok")

    def test_header_case_and_order_preserved(self):
        sent = [["X-B", "1"], ["x-a", "2"], ["X-Mixed-CASE", "3"]]
        _, j = self.echo(headers=[tuple(h) for h in sent])
        got = [h for h in j["headers"] if h[0].lower() in ("x-b", "x-a", "x-mixed-case")]
        self.assertEqual(got, sent)

    def test_xff_and_via_added(self):
        r, j = self.echo()
        self.assertEqual([v for n, v in j["headers"] if n.lower() == "x-forwarded-for"], ["127.0.0.1"])
        via = " ".join(v for n, v in j["headers"] if n.lower() == "via")
        self.assertIn("moxy", via, j["headers"])
        self.assertIn("moxy", " ".join(r.header_all("via")), r.headers)

    def test_xff_appended(self):
        _, j = self.echo(headers=[("X-Forwarded-For", "10.0.0.1")])
        xff = ", ".join(v for n, v in j["headers"] if n.lower() == "x-forwarded-for")
        self.assertEqual(xff, "10.0.0.1, 127.0.0.1")

    def test_xff_and_via_disabled(self):
        r, j = self.echo(port=self.plain_port, headers=[("X-Forwarded-For", "10.0.0.1")])
        self.assertEqual([v for n, v in j["headers"] if n.lower() == "x-forwarded-for"], ["10.0.0.1"])
        self.assertEqual([v for n, v in j["headers"] if n.lower() == "via"], [])
        self.assertEqual(r.header_all("via"), [])

    def test_connect_refused_405(self):
        before = len(self.origin.requests)
        with Client(self.moxy.port) as c:
            c.send(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n")
            r = c.response()
        self.assert_status(r, 405)
        self.assertEqual(len(self.origin.requests), before)

    def test_absolute_form_target(self):
        _, j = self.echo(target="http://example.test/abs?q=1", headers=[("Host", "ignored.test")])
        self.assertEqual(j["target"], "/abs?q=1")
        self.assertEqual([v for n, v in j["headers"] if n.lower() == "host"], ["example.test"])


if __name__ == "__main__":
    unittest.main()
