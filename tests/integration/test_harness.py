"""Self-test of the harness: the client and curl against the origin directly
(no moxy). If these fail, the other suites' results mean nothing."""
import json
import tempfile
import unittest

from harness import (MiB, Client, MoxyTestCase, build_request, config, curl, pattern, service, sha,
                     to_yaml, upstream, ws_accept, ws_frame, ws_read)


class HarnessSelfTest(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        cls.origin = cls.class_origin()

    def test_echo_keepalive_chunked_and_order(self):
        before = self.origin.connections
        with Client(self.origin.port) as c:
            body = pattern(100000)
            r = c.request("POST", "/echo?x=1", [("X-B", "1"), ("x-a", "2")], body, chunked=True)
            self.assertEqual(r.status, 200)
            j = r.json()
            self.assertEqual((j["target"], j["body_len"], j["body_sha256"], j["chunked"]),
                             ("/echo?x=1", len(body), sha(body), True))
            self.assertEqual(j["headers"][1:3], [["X-B", "1"], ["x-a", "2"]])
            r = c.request("GET", "/chunked?n=70000&size=1000")
            self.assertTrue(r.chunked)
            self.assertEqual(r.body, pattern(70000))
            r = c.request("HEAD", "/bytes?n=10")
            self.assertEqual((r.status, r.header("content-length"), r.body), (200, "10", b""))
        self.assertEqual(self.origin.connections - before, 1)

    def test_expect_pipelining_and_close(self):
        with Client(self.origin.port) as c:
            c.send(build_request("POST", "/expect", [("Content-Length", "3"), ("Expect", "100-continue")]))
            self.assertEqual(c.response(interim=True).status, 100)
            c.send(b"abc" + build_request("GET", "/echo?2") + build_request("GET", "/status?code=404"))
            self.assertEqual(c.response().json()["body_len"], 3)
            self.assertEqual(c.response().json()["target"], "/echo?2")
            self.assertEqual(c.response().status, 404)
        with Client(self.origin.port) as c:
            c.send(build_request("GET", "/close-mid-body"))
            r = c.response(partial_ok=True)
            self.assertEqual((r.status, r.complete, len(r.body)), (200, False, 50000))

    def test_websocket(self):
        with Client(self.origin.port) as c:
            key = "dGhlIHNhbXBsZSBub25jZQ=="
            r = c.request("GET", "/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                         ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")])
            self.assertEqual((r.status, r.header("sec-websocket-accept")), (101, ws_accept(key)))
            for msg in (b"hi", b"x" * 300, pattern(70000)):
                c.send(ws_frame(2, msg))
                self.assertEqual(ws_read(c.reader)[1:3], (2, msg))
            c.send(ws_frame(8, b"\x03\xe8"))
            self.assertEqual(ws_read(c.reader)[1], 8)

    def test_curl_upload_and_download(self):
        with tempfile.NamedTemporaryFile() as f:
            f.write(pattern(MiB))
            f.flush()
            r = curl(f"http://127.0.0.1:{self.origin.port}/echo", method="PUT", data_file=f.name)
        self.assertEqual((r.status, r.rc), (200, 0), r.stderr)
        self.assertEqual(json.loads(r.body)["body_sha256"], sha(pattern(MiB)))
        r = curl(f"http://127.0.0.1:{self.origin.port}/bytes?n=5000")
        self.assertEqual(r.body, pattern(5000))

    def test_yaml(self):
        text = config([service("web", 8080, read_timeout=1, limits={"max_headers": 5})],
                      {"origin": upstream(9000)}, error_log="{tmp}/e.log")
        self.assertIn('services:\n  - name: "web"\n    listeners: ["127.0.0.1:8080"]\n', text)
        self.assertIn('    limits:\n      max_headers: 5\n', text)
        self.assertEqual(to_yaml({"a": [{"b": 1, "c": [1]}]}), "a:\n  - b: 1\n    c: [1]")


if __name__ == "__main__":
    unittest.main()
