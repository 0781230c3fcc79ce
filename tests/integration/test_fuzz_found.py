"""Bugs the libFuzzer targets (tests/fuzz) found, each reproduced through the
real binary; the docstring tells the input and what went wrong."""
import socket

from harness import Client, MoxyTestCase, build_request, config, free_port, service, upstream
import test_review


class FuzzFound(MoxyTestCase):
    def moxy_in_front_of(self, handler):
        """moxy proxying to a raw origin whose connections <handler> serves."""
        o = test_review.RawOrigin(handler)
        self.addCleanup(o.stop)
        return self.start_moxy(config([service("web", free_port())], {"origin": upstream(o.port)}))

    def moxy_in_front_of_answer(self, raw):
        """... to an origin that reads one request head, sends <raw> and closes."""
        def handler(conn):
            test_review.read_head(conn)
            conn.sendall(raw)
            conn.shutdown(socket.SHUT_WR)
        return self.moxy_in_front_of(handler)

    def assert_invalid_response(self, raw, path):
        """The client gets a 502 for <raw> and the log calls it invalid."""
        m = self.moxy_in_front_of_answer(raw)
        with Client(m.port) as c:
            r = c.request("GET", path)
        self.assert_status(r, 502, m)
        self.assertIn("invalid response", m.error_log())

    def test_upstream_status_of_two_digits_is_a_502(self):
        """upstream_response fuzz target: llhttp 8.1 accepts a status code of
        one or two digits ("HTTP/1.1 20 OK") or below 100 ("099"). upconn.c
        took it as a final response and the client got "HTTP/1.1 020 OK"; a
        status line without 3DIGIT (RFC 9112 §4) is an invalid response: 502."""
        self.assert_invalid_response(b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nhi", "/two-digits")

    def test_no_body_responses_end_at_their_empty_line(self):
        """upstream_response fuzz target: llhttp 8.1 reads a body for a 1xx,
        204 or 304 response that carries Content-Length or chunked framing,
        and the session sent those bytes to the client behind a head that
        says there is no body (RFC 9112 §6.3: such a response ends at its
        empty line). An origin could so put a response of its choosing in
        front of the client's next one. Here a 204 carries "Content-Length: 5"
        and "hello"; the client's second request must get the origin's own
        answer, not bytes left over from the first."""
        count = [0]

        def handler(conn):
            while True:
                try:
                    test_review.read_head(conn)
                except EOFError:
                    return
                count[0] += 1
                if count[0] == 1:
                    conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        m = self.moxy_in_front_of(handler)
        with Client(m.port) as c:
            self.assert_status(c.request("GET", "/no-content"), 204, m)
            r = c.request("GET", "/next")
            self.assert_status(r, 200, m)
            self.assertEqual(r.body, b"ok")

    def test_interim_response_body_is_not_read(self):
        """The same for a 1xx: "100 Continue" with "Content-Length: 3" made
        llhttp take the first 3 bytes of the final response as its body (they
        went to the client) and the rest failed to parse: 502."""
        m = self.moxy_in_front_of_answer(b"HTTP/1.1 100 Continue\r\nContent-Length: 3\r\n\r\n"
                                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        with Client(m.port) as c:
            r = c.request("GET", "/interim")
        self.assert_status(r, 200, m)
        self.assertEqual(r.body, b"ok")

    def test_upstream_content_length_past_int64_is_a_502(self):
        """upstream_response fuzz target: "Content-Length: 010000000007386721486".
        llhttp accepts values up to 2^64 - 1, and upconn.c passed the head on,
        while moxy refuses any Content-Length above 2^63 - 1 (it must fit an
        int64_t wherever it travels; requests get a 400): from an origin it is
        an invalid Content-Length, a 502 (RFC 9112 §6.3), not a head to pass on."""
        m = self.moxy_in_front_of_answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000000000000\r\n\r\nabc")
        with Client(m.port) as c:
            c.send(build_request("GET", "/huge"))
            r = c.response(partial_ok=True)
        self.assert_status(r, 502, m)

    def test_upstream_lone_cr_is_a_502(self):
        """llhttp's loose build took a CR followed by any byte as the end of a
        status line or of a response head (CVE-2023-30589): "200 OK\\rX-A: b"
        became a header. moxy builds llhttp strict: an invalid response, 502."""
        for name, raw in (("status", b"HTTP/1.1 200 OK\rContent-Length: 2\r\n\r\nhi"),
                          ("head_end", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\rXhi")):
            self.assert_invalid_response(raw, "/lone-cr-" + name)

    def test_upstream_empty_transfer_encoding_is_a_502(self):
        """upstream_response fuzz target: "Content-Length: 5" with an empty
        "Transfer-Encoding:". llhttp takes the empty field for no field, so the
        head carried both framings past upconn.c (any non-empty value with a
        Content-Length is llhttp's own error): an invalid response, 502."""
        self.assert_invalid_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n\r\nhello", "/empty-te")
