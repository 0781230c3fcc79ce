"""Upstream side: round robin, failover to the next backend, the keepalive
pool (a dead pooled connection is retried once for idempotent requests only,
idle timeout, pool size 0), unix-socket origins, 1xx and trailers."""
import os
import socket
import tempfile
import time

from harness import (Client, MoxyTestCase, Origin, build_request, config, free_port, header,
                     read_response, Reader, request, service, simple_config, upstream, wait_for)


class RoundRobin(MoxyTestCase):
    def test_two_backends_share_requests_evenly(self):
        a, b = self.start_origin(), self.start_origin()
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [a.addr, b.addr], "read_timeout": 5}})
        m = self.start_moxy(conf)
        for i in range(10):
            with Client(m.port) as c:     # new client connection each time
                self.assert_status(c.request("GET", f"/echo?i={i}"), 200, m)
        self.assertEqual((a.request_count, b.request_count), (5, 5))

    def test_connect_failure_fails_over_to_the_next_backend(self):
        live = self.start_origin()
        dead = free_port()
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [f"127.0.0.1:{dead}", live.addr], "max_retries": 1,
                                  "connect_timeout": 1, "read_timeout": 5}})
        m = self.start_moxy(conf)
        for i in range(6):
            self.assert_status(request(m.port, "GET", f"/echo?i={i}"), 200, m)
        self.assertEqual(live.request_count, 6)
        self.assertIn(f"127.0.0.1:{dead}", m.error_log())


class Pool(MoxyTestCase):
    def setUp(self):
        super().setUp()
        self.origin = self.start_origin()

    def test_idempotent_request_retried_when_pooled_connection_dies(self):
        m = self.start_moxy(simple_config(self.origin.port))
        with Client(m.port) as c:
            self.assert_status(c.request("GET", "/drop-next"), 200, m)
            # The origin drops the pooled connection when this request arrives:
            # moxy must resend it once on a fresh connection.
            r = c.request("GET", "/echo?after-drop")
            self.assert_status(r, 200, m)
            self.assertEqual(r.json()["target"], "/echo?after-drop")
        self.assertEqual(self.origin.connections, 2)
        self.assertIn("retrying", m.error_log())

    def test_post_is_not_resent_on_a_dead_pooled_connection(self):
        m = self.start_moxy(simple_config(self.origin.port))
        with Client(m.port) as c:
            self.assert_status(c.request("GET", "/drop-next"), 200, m)
            r = c.request("POST", "/echo?once", body=b"payment")
            self.assert_status(r, 502, m)
        self.assertEqual([t for t in self.origin.targets() if t == "/echo?once"], ["/echo?once"])

    def test_idle_pooled_connections_close_after_idle_timeout(self):
        m = self.start_moxy(simple_config(self.origin.port, upstream_opts={"idle_timeout": 0.3}))
        self.assert_status(request(m.port, "GET", "/echo?1"), 200, m)
        self.assertTrue(wait_for(lambda: not self.origin._conns, 3), "idle upstream connection kept")
        self.assert_status(request(m.port, "GET", "/echo?2"), 200, m)
        self.assertEqual(self.origin.connections, 2)

    def test_pool_size_zero_keeps_no_idle_connection(self):
        m = self.start_moxy(simple_config(self.origin.port, upstream_keepalive_pool_size=0))
        with Client(m.port) as c:
            for i in range(3):
                self.assert_status(c.request("GET", f"/echo?{i}"), 200, m)
        self.assertEqual(self.origin.connections, 3)


class UnixOrigin(MoxyTestCase):
    def test_proxies_to_a_unix_socket_origin(self):
        d = tempfile.mkdtemp(prefix="moxy-unix-")
        path = os.path.join(d, "origin.sock")
        o = Origin(unix_path=path)
        self.addCleanup(o.stop)
        o.start()
        conf = config([service("web", free_port())], {"origin": {"backends": [f"unix:{path}"]}})
        m = self.start_moxy(conf)
        with Client(m.port) as c:
            for i in range(3):
                r = c.request("POST", f"/echo?u={i}", body=b"x" * 1000)
                self.assert_status(r, 200, m)
                self.assertEqual(r.json()["body_len"], 1000)
        self.assertEqual(o.connections, 1, "unix upstream connections are not pooled")


class Interim(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        cls.origin = cls.class_origin()
        cls.moxy = cls.class_moxy(simple_config(cls.origin.port))

    def test_103_early_hints_forwarded_before_the_final_response(self):
        with Client(self.moxy.port) as c:
            r = c.request("GET", "/early-hints")
            self.assert_status(r, 200, self.moxy)
            self.assertEqual(r.body, b"final")
            self.assertEqual([i.status for i in r.interim], [103])
            self.assertIn("preload", r.interim[0].header("link"))

    def test_response_trailers_forwarded(self):
        with Client(self.moxy.port) as c:
            c.send(build_request("GET", "/trailers"))
            head = c.reader.read_until(b"\r\n\r\n")
            self.assertIn(b"chunked", head.lower())
            rest = c.reader.read_until(b"0\r\n") + c.reader.read_until(b"\r\n\r\n")
            self.assertIn(b"hello", rest)
            self.assertIn(b"X-Checksum: abc\r\n", rest)
            self.assertIn(b"X-Other: 1\r\n", rest)
            # The connection is still usable after the trailer section.
            self.assert_status(c.request("GET", "/echo?after-trailers"), 200, self.moxy)
