"""Bugs the libFuzzer targets (tests/fuzz) found, each reproduced through the
real binary; the docstring tells the input and what went wrong."""
import socket

from harness import Client, MoxyTestCase, config, free_port, service, upstream
import test_review


class FuzzFound(MoxyTestCase):
    def raw_origin(self, handler):
        o = test_review.RawOrigin(handler)
        self.addCleanup(o.stop)
        return o

    def test_upstream_status_of_two_digits_is_a_502(self):
        """upstream_response fuzz target: llhttp 8.1 accepts a status code of
        one or two digits ("HTTP/1.1 20 OK") or below 100 ("099"). upconn.c
        took it as a final response and the client got "HTTP/1.1 020 OK"; a
        status line without 3DIGIT (RFC 9112 §4) is an invalid response: 502."""
        def handler(conn):
            test_review.read_head(conn)
            conn.sendall(b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nhi")
            conn.shutdown(socket.SHUT_WR)
        o = self.raw_origin(handler)
        m = self.start_moxy(config([service("web", free_port())], {"origin": upstream(o.port)}))
        with Client(m.port) as c:
            r = c.request("GET", "/two-digits")
        self.assert_status(r, 502, m)
        self.assertIn("invalid response", m.error_log())
