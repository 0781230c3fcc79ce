"""Listeners and the downstream side: unix sockets, IPv6, client timeouts,
log reopening on SIGUSR1, SIGINT."""
import os
import random
import signal
import socket
import threading
import time

from harness import (Client, MoxyError, MoxyTestCase, Reader, build_request, config, free_port,
                     read_response, request, upstream, wait_for)


def unix_request(path, target):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(path)
    try:
        s.sendall(build_request("GET", target))
        return read_response(Reader(s))
    finally:
        s.close()


def free_port6():
    """A TCP port on ::1 that was free a moment ago (a v4 check says nothing of v6)."""
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


def free_port_below_ephemeral():
    """A free TCP port on 127.0.0.1 below the ephemeral range. A client that keeps
    connecting to a port nothing listens on can otherwise be given that port as
    its own source and connect to itself (TCP simultaneous open)."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for port in random.sample(range(max(1024, low - 12000), low), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port below {low}")


def ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


class Listeners(MoxyTestCase):
    def setUp(self):
        super().setUp()
        self.origin = self.start_origin()

    def conf(self, listeners, **svc):
        return config([{"name": "web", "listeners": listeners, "upstream": "origin", **svc}],
                      {"origin": upstream(self.origin.port)})

    def test_unix_listener(self):
        port = free_port()
        m = self.start_moxy(self.conf([f"127.0.0.1:{port}", "unix:{tmp}/moxy.sock"]))
        path = m.path("moxy.sock")
        r = unix_request(path, "/echo?via-unix")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["target"], "/echo?via-unix")
        m.stop()
        self.assertFalse(os.path.exists(path), "unix socket file left behind")

    def test_no_address_accepts_before_every_address_is_bound(self):
        # The second address is taken, so moxy must exit without ever having
        # accepted a client on the first: it binds every address and only then
        # listens on them. (When it listened on each as it went, the first
        # accepted clients until the exit reset them, and a client that saw the
        # TCP port up could find the unix socket not there yet.)
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        self.addCleanup(held.close)
        port, taken = free_port_below_ephemeral(), held.getsockname()[1]
        stop, connected, attempts = threading.Event(), [], [0]

        def knock():
            while not stop.is_set():
                attempts[0] += 1
                s = socket.socket()
                try:
                    s.connect(("127.0.0.1", port))
                    if s.getsockname() != s.getpeername():     # not a self-connect
                        connected.append(port)
                except OSError:
                    pass
                finally:
                    s.close()

        t = threading.Thread(target=knock, daemon=True)
        t.start()
        up_before_exit = 0
        try:
            for _ in range(5):
                m = self.start_moxy(self.conf([f"127.0.0.1:{port}", f"127.0.0.1:{taken}"]),
                                    start=False)
                try:
                    m.start()       # returns once the first address accepts
                    up_before_exit += 1
                    self.assertIsNotNone(m.wait_exit(10), "moxy kept running without its second address")
                except MoxyError as e:
                    self.assertIn("cannot listen on 127.0.0.1:%d" % taken, str(e))
        finally:
            stop.set()
            t.join(5)
        self.assertGreater(attempts[0], 100)
        self.assertEqual(up_before_exit, 0, "the first address accepted, then moxy exited")
        self.assertEqual(len(connected), 0, "clients connected to an address of a moxy that then exited")

    def test_ipv6_listener(self):
        if not ipv6_loopback():
            self.skipTest("no IPv6 loopback here")
        port, port6 = free_port(), free_port6()
        m = self.start_moxy(self.conf([f"127.0.0.1:{port}", f"[::1]:{port6}"]))
        s = socket.create_connection(("::1", port6), timeout=5)
        try:
            s.sendall(build_request("GET", "/echo?v6"))
            r = read_response(Reader(s))
        finally:
            s.close()
        self.assertEqual(r.status, 200)
        xff = [v for n, v in r.json()["headers"] if n.lower() == "x-forwarded-for"]
        self.assertEqual(xff, ["::1"])

    def test_keepalive_timeout_closes_an_idle_client(self):
        m = self.start_moxy(self.conf([f"127.0.0.1:{free_port()}"], timeouts={"keepalive": 0.5}))
        with Client(m.port) as c:
            self.assert_status(c.request("GET", "/echo"), 200, m)
            t0 = time.monotonic()
            closed, _ = c.wait_closed(5)
            self.assertTrue(closed)
            self.assertLess(time.monotonic() - t0, 3)

    def test_client_header_timeout_408(self):
        m = self.start_moxy(self.conf([f"127.0.0.1:{free_port()}"], timeouts={"client_header": 0.5}))
        with Client(m.port) as c:
            c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n")   # never finishes the head
            r = c.response()
            self.assertEqual(r.status, 408)
            closed, _ = c.wait_closed(3)
            self.assertTrue(closed)
        self.assertEqual(self.origin.request_count, 0)


class Signals(MoxyTestCase):
    def test_sigusr1_reopens_the_access_log(self):
        o = self.start_origin()
        conf = config([{"name": "web", "listeners": [f"127.0.0.1:{free_port()}"], "upstream": "origin"}],
                      {"origin": upstream(o.port)}, access_log="{tmp}/access.log")
        m = self.start_moxy(conf)
        self.assert_status(request(m.port, "GET", "/echo?before"), 200, m)
        log = m.path("access.log")
        # The line is written after the response goes out: wait for it, or it may land
        # in the new file and the test would blame the reopen.
        self.assertTrue(wait_for(lambda: "/echo?before" in m.read(log), 3))
        os.rename(log, log + ".1")           # what logrotate does
        m.signal(signal.SIGUSR1)
        self.assertTrue(wait_for(lambda: os.path.exists(log), 3), "log not reopened")
        self.assert_status(request(m.port, "GET", "/echo?after"), 200, m)
        self.assertTrue(wait_for(lambda: "/echo?after" in m.read(log), 3))
        self.assertIn("/echo?before", m.read(log + ".1"))
        self.assertNotIn("/echo?after", m.read(log + ".1"))

    def test_sigint_exits_at_once(self):
        o = self.start_origin()
        m = self.start_moxy(config([{"name": "web", "listeners": [f"127.0.0.1:{free_port()}"],
                                      "upstream": "origin"}], {"origin": upstream(o.port)},
                                   grace_period_seconds=5))
        m.signal(signal.SIGINT)
        t0 = time.monotonic()
        self.assertEqual(m.wait_exit(5), 0)
        self.assertLess(time.monotonic() - t0, 2, "SIGINT waited for the grace period")
