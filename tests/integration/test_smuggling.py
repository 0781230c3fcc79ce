"""Request smuggling and malformed requests: each gets 400 (or the listed
status), the connection closes, and nothing reaches the origin. Each bad
request is followed by a smuggled 'GET /smuggled' that must never be seen."""
import time
import unittest

from harness import Client, MoxyTestCase, config, free_port, service, simple_config, upstream

SMUGGLED = b"GET /smuggled?case=CASE HTTP/1.1\r\nHost: x\r\n\r\n"


def post(headers, body=b""):
    return b"POST /echo?case=CASE HTTP/1.1\r\nHost: moxy.test\r\n" + headers + b"\r\n" + body + SMUGGLED


# name -> (raw request, accepted statuses, whether it is only detectable in the body)
CASES = {
    "cl_and_te": (post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"), (400,), False),
    "two_different_cl": (post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), (400,), False),
    "duplicate_same_cl": (post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), (400,), False),
    "cl_abc": (post(b"Content-Length: abc\r\n"), (400,), False),
    "cl_negative": (post(b"Content-Length: -1\r\n"), (400,), False),
    "cl_with_space": (post(b"Content-Length: 1 2\r\n", b"x"), (400,), False),
    "bad_chunk_size": (post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"), (400,), True),
    "chunk_missing_crlf": (post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX0\r\n\r\n"), (400,), True),
    "obs_fold": (post(b"X-A: 1\r\n  folded\r\nContent-Length: 0\r\n"), (400,), False),
    "bare_cr_in_header": (post(b"X-A: a\rb\r\nContent-Length: 0\r\n"), (400,), False),
    "space_before_colon": (post(b"Content-Length : 0\r\n"), (400,), False),
    "te_gzip_only": (post(b"Transfer-Encoding: gzip\r\n", b"abc"), (400, 501), False),
    "te_chunked_not_last": (post(b"Transfer-Encoding: chunked, gzip\r\n", b"0\r\n\r\n"), (400, 501), False),
    "nul_in_header": (post(b"X-A: a\x00b\r\nContent-Length: 0\r\n"), (400,), False),
    "nul_in_target": (b"GET /ec\x00ho?case=CASE HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED, (400,), False),
    "bad_version": (b"GET /echo?case=CASE HTTP/1.7x\r\nHost: x\r\n\r\n" + SMUGGLED, (400, 505), False),
    # A CR must be followed by LF (RFC 9112 §2.2). llhttp's loose build took CR +
    # any byte as the end of these lines (CVE-2023-30589); moxy builds it strict.
    "lone_cr_ends_head": (b"GET /echo?case=CASE HTTP/1.1\r\nHost: x\r\n\rX" + SMUGGLED, (400,), False),
    "lone_cr_after_chunk_size": (post(b"Transfer-Encoding: chunked\r\n", b"5\rXhello\r\n0\r\n\r\n"), (400,), True),
    "lone_cr_after_last_chunk": (post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\rX\r\n"), (400,), True),
    "lone_cr_ends_trailers": (post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\rX"), (400,), True),
}


class Smuggling(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        cls.origin = cls.class_origin()
        cls.moxy = cls.class_moxy(simple_config(cls.origin.port))

    def check_rejected(self, name, raw, statuses, body_level):
        o = self.origin
        nbytes = self.quiet_bytes()
        with Client(self.moxy.port) as c:
            c.send(raw.replace(b"CASE", name.encode()))
            self.assert_status(c.response(), statuses)
            self.assert_closed(c, "after a rejected request")
        time.sleep(0.1)
        self.assertEqual([t for t in o.targets() if f"case={name}" in t], [], "requests reached the origin")
        if not body_level:
            self.assertEqual(o.bytes_received, nbytes, "bytes reached the origin")
        with Client(self.moxy.port) as c:        # still serving
            self.assert_status(c.request("GET", "/echo?after"), 200)

    def test_chunk_crlf_missing_at_the_start_of_a_read(self):
        """Chunk data whose CRLF is missing where a new read begins is refused
        by the guard before llhttp sees the bytes; the log line names why (it
        printed llhttp's reason, NULL there, as "(null)")."""
        name = "chunk_crlf_split"
        with Client(self.moxy.port) as c:
            c.send(b"POST /echo?case=" + name.encode() + b" HTTP/1.1\r\nHost: moxy.test\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello")
            time.sleep(0.3)
            c.send(b"XX0\r\n\r\n" + SMUGGLED.replace(b"CASE", name.encode()))
            self.assert_status(c.response(), 400)
            self.assert_closed(c, "after a rejected request")
        time.sleep(0.1)
        self.assertEqual([t for t in self.origin.targets() if f"case={name}" in t], [])
        log = self.moxy.error_log()
        self.assertIn("client sent invalid request: HPE_USER (no CRLF after chunk data)", log)
        self.assertNotIn("(null)", log)

    def test_te_chunked_tab_refused_before_the_origin(self):
        """Found by tests/fuzz (h1_request): llhttp 8.1 does not take
        "Transfer-Encoding: chunked<TAB>" for chunked and refuses the request
        only after on_headers_complete() has returned, while moxy trimmed the
        tab and took the head as valid. The session had started by then: with
        an idle upstream connection in the pool, the head went to the origin
        (as a request without a body) before the client got its 400."""
        with Client(self.moxy.port) as c:        # leaves an idle upstream connection
            self.assert_status(c.request("GET", "/echo?warm"), 200)
        raw = (b"GET /echo?case=CASE HTTP/1.1\r\nHost: moxy.test\r\n"
               b"Transfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n" + SMUGGLED)
        self.check_rejected("te_chunked_tab", raw, (400,), False)

    def test_connect_with_a_body_refused_before_the_origin(self):
        """Found by tests/fuzz (h1_request): a CONNECT with "Content-Length: 5".
        llhttp gives a CONNECT no body whatever its framing fields say (what
        follows the head is the tunnel's), but moxy set req_has_body and sent
        the CONNECT upstream with its Content-Length: an origin reading those
        5 bytes as a body waits for bytes moxy keeps for the tunnel, or takes
        tunnel bytes for a body. RFC 9110 9.3.6: CONNECT has no content: 400."""
        m = self.start_moxy(config([service("web", free_port(), allow_connect=True)],
                                   {"origin": upstream(self.origin.port)}))
        with Client(m.port) as c:
            c.send(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n"
                   b"Content-Length: 5\r\n\r\nhello")
            self.assert_status(c.response(), (400,))
            self.assert_closed(c, "after a rejected request")
        self.assertEqual([t for t in self.origin.targets() if "example.test" in t], [],
                         "the CONNECT reached the origin")

    def quiet_bytes(self, timeout=2):
        """origin.bytes_received once unchanged for 100 ms (earlier traffic settled)."""
        deadline = time.monotonic() + timeout
        while True:
            before = self.origin.bytes_received
            time.sleep(0.1)
            if self.origin.bytes_received == before or time.monotonic() > deadline:
                return self.origin.bytes_received


def _make(name, raw, statuses, body_level):
    return lambda self: self.check_rejected(name, raw, statuses, body_level)


for _name, _case in CASES.items():
    setattr(Smuggling, f"test_{_name}", _make(_name, *_case))


if __name__ == "__main__":
    unittest.main()
