"""Request and response bodies, byte for byte: Content-Length and chunked,
0 B / 1 KiB / 10 MiB, via the raw client and via curl; Expect: 100-continue."""
import json
import tempfile
import unittest

from harness import (MiB, SLOW, Client, MoxyTestCase, build_request, curl, pattern, sha,
                     simple_config)

SIZES = {"0": 0, "1k": 1024, "10m": 10 * MiB}


class Bodies(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        cls.origin = cls.class_origin()
        cls.moxy = cls.class_moxy(simple_config(cls.origin.port))

    def check_echo(self, j, method, body, chunked=None):
        self.assertEqual((j["method"], j["body_len"], j["body_sha256"]), (method, len(body), sha(body)))
        if chunked is not None:
            self.assertEqual(j["chunked"], chunked)

    def raw_upload(self, method, size):
        body = pattern(size)
        with Client(self.moxy.port, timeout=10 * SLOW) as c:
            r = c.request(method, "/echo", body=body)
        self.assert_status(r, 200)
        self.check_echo(r.json(), method, body)

    def curl_upload(self, method, size):
        body = pattern(size)
        with tempfile.NamedTemporaryFile(prefix="moxy-body-") as f:
            f.write(body)
            f.flush()
            r = curl(f"http://127.0.0.1:{self.moxy.port}/echo", method=method, data_file=f.name,
                     headers=["Content-Type: application/octet-stream"])
        self.assertEqual((r.rc, r.status), (0, 200), r.stderr)
        self.check_echo(json.loads(r.body), method, body)

    # test_raw_{get,post,put}_{0,1k,10m} and test_curl_... are generated below

    def test_raw_download_10m(self):
        with Client(self.moxy.port, timeout=10 * SLOW) as c:
            r = c.request("GET", f"/bytes?n={10 * MiB}")
            self.assert_status(r, 200)
            self.assertEqual(sha(r.body), sha(pattern(10 * MiB)))
            r = c.request("GET", "/bytes?n=0")   # same connection still in sync
            self.assertEqual((r.status, r.body), (200, b""))

    def test_curl_download_10m(self):
        r = curl(f"http://127.0.0.1:{self.moxy.port}/bytes?n={10 * MiB}")
        self.assertEqual((r.rc, r.status), (0, 200), r.stderr)
        self.assertEqual(sha(r.body), sha(pattern(10 * MiB)))

    def test_chunked_request_raw(self):
        with Client(self.moxy.port) as c:
            for size, chunk in ((0, 1), (1, 1), (5000, 7), (300000, 65536)):
                body = pattern(size)
                r = c.request("POST", "/echo", body=body, chunked=True, chunk_size=chunk)
                self.assert_status(r, 200)
                self.check_echo(r.json(), "POST", body)

    def test_chunked_request_curl(self):
        body = pattern(MiB + 3)
        with tempfile.NamedTemporaryFile(prefix="moxy-body-") as f:
            f.write(body)
            f.flush()
            r = curl(f"http://127.0.0.1:{self.moxy.port}/echo", method="POST", data_file=f.name,
                     headers=["Transfer-Encoding: chunked"])
        self.assertEqual((r.rc, r.status), (0, 200), r.stderr)
        self.check_echo(json.loads(r.body), "POST", body)

    def test_chunked_response_raw(self):
        with Client(self.moxy.port) as c:
            for n, size in ((0, 1), (100000, 1000), (MiB, 100000)):
                r = c.request("GET", f"/chunked?n={n}&size={size}")
                self.assert_status(r, 200)
                self.assertEqual(r.body, pattern(n), f"n={n}")

    def test_chunked_response_curl(self):
        r = curl(f"http://127.0.0.1:{self.moxy.port}/chunked?n=300000&size=777")
        self.assertEqual((r.rc, r.status), (0, 200), r.stderr)
        self.assertEqual(r.body, pattern(300000))

    def test_expect_100_continue(self):
        with Client(self.moxy.port) as c:
            c.send(build_request("POST", "/expect", [("Content-Length", "1000"), ("Expect", "100-continue")]))
            first = c.response(interim=True)      # times out if moxy waits for the body
            self.assertEqual((first.status, first.version), (100, "HTTP/1.1"))
            c.send(pattern(1000))
            r = c.response()
            self.assert_status(r, 200)
            self.check_echo(r.json(), "POST", pattern(1000))
            r = c.request("GET", "/echo?after-expect")
            self.assertEqual(r.json()["target"], "/echo?after-expect")


def _make(kind, method, size):
    def test(self):
        (self.raw_upload if kind == "raw" else self.curl_upload)(method, size)
    test.__doc__ = f"{method} with a {size}-byte body via {kind}, sha256 compared at the origin"
    return test


for _kind in ("raw", "curl"):
    for _method in ("GET", "POST", "PUT"):
        for _name, _size in SIZES.items():
            setattr(Bodies, f"test_{_kind}_{_method.lower()}_{_name}", _make(_kind, _method, _size))


if __name__ == "__main__":
    unittest.main()
