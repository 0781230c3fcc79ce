"""Every phase may wait (issue 3): moxy.sleep in the response-side phases, logging that
waits after the response, request_body_filter, error_while_proxy retries, peer timeouts
and host names, and the errors of the new phases. The script is lua/waits.lua: query
arguments choose what each phase does."""
import os
import signal
import socket
import struct
import threading
import time

from harness import (SLOW, Client, MoxyTestCase, config, free_port, pattern, request, upstream)
from test_lua import script

LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua")


class ResetOrigin:
    """Accepts, reads the request head, then resets the connection (SO_LINGER 0)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                c.settimeout(5)
                c.recv(65536)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            finally:
                c.close()

    def stop(self):
        self.sock.close()


class EarlyOrigin:
    """Answers 200 "early" as soon as the request head arrived, then reads the body."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.settimeout(5)
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = c.recv(65536)
                if not data:
                    return
                buf += data
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
            while c.recv(65536):
                pass
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.sock.close()


class Blackhole:
    """A listener whose backlog is full: a connect to it hangs (SYNs are dropped)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(c)
        time.sleep(0.1)

    def stop(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


class Sink:
    """Accepts and never reads: writes to it stall once the socket buffers are full."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self.conns.append(c)

    def stop(self):
        for c in self.conns:
            c.close()
        self.sock.close()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Waits(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        import tempfile
        cls.origin = cls.class_origin()
        cls.resetter = ResetOrigin()
        cls.early = EarlyOrigin()
        cls.blackhole = Blackhole()
        cls.sink = Sink()
        cls.idle_origin = cls.class_origin()  # only test_peer_idle_timeout uses it
        path = script("waits.lua", tempfile.mkdtemp(prefix="moxy-lua-"),
                      ORIGIN_PORT=cls.origin.port, DEAD_PORT=free_port(),
                      RESET_PORT=cls.resetter.port, EARLY_PORT=cls.early.port,
                      BLACKHOLE_PORT=cls.blackhole.port, SINK_PORT=cls.sink.port,
                      IDLE_PORT=cls.idle_origin.port)
        conf = config([{"name": "web", "listeners": [f"127.0.0.1:{free_port()}"],
                        "script": path}], {"origin": upstream(cls.origin.port)},
                      log_level="info", threads=1, access_log="{tmp}/access.log")
        cls.moxy = cls.class_moxy(conf)

    @classmethod
    def tearDownClass(cls):
        cls.resetter.stop()
        cls.early.stop()
        cls.blackhole.stop()
        cls.sink.stop()
        super().tearDownClass()

    def get(self, target, **kw):
        t0 = time.monotonic()
        r = request(self.moxy.port, kw.pop("method", "GET"), target, **kw)
        return r, time.monotonic() - t0

    # --- every phase may wait ---------------------------------------------------------

    def test_upstream_response_filter_and_response_filter_wait(self):
        r, took = self.get("/echo?urf=0.2&rf=0.2")
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(r.header("x-urf"), "slept")
        self.assertEqual(r.header("x-rf"), "slept")
        self.assertGreaterEqual(took, 0.38)
        self.assertEqual(r.json()["target"], "/echo?urf=0.2&rf=0.2")  # the body followed

    def test_head_response_after_a_wait_has_no_body_and_keeps_the_connection(self):
        with Client(self.moxy.port) as c:
            r = c.request("HEAD", "/bytes?n=100&rf=0.1")
            self.assert_status(r, 200, self.moxy)
            self.assertEqual(r.header("x-rf"), "slept")
            r = c.request("GET", "/bytes?n=100&urf=0.05")
            self.assertEqual(r.body, pattern(100))

    def test_moxy_http_in_response_filter(self):
        r, _ = self.get("/bytes?n=70000&sub=1&rbf=0.001")
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(r.header("x-sub"), "207")
        self.assertEqual(r.body, pattern(70000).upper())

    def test_connected_to_upstream_and_trailer_filter_wait(self):
        r, took = self.get("/echo?ctu=0.2")
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(r.header("x-ctu"), "slept")
        self.assertGreaterEqual(took, 0.18)
        r, took = self.get("/trailers?rtf=0.2")
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(r.body, b"hello")
        self.assertEqual(dict((k.lower(), v) for k, v in r.trailers).get("x-checksum"), "slept")

    def test_response_body_filter_waits_per_chunk_and_keeps_every_byte(self):
        # Chunks of 7000 bytes, several per read: the parser pauses and resumes.
        r, _ = self.get("/chunked?n=300000&size=7000&rbf=0.001", timeout=30 * SLOW)
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(r.body, pattern(300000).upper())
        r, _ = self.get("/bytes?n=100000&rbf=0", timeout=30 * SLOW)
        self.assertEqual(r.body, pattern(100000).upper())

    def test_fail_to_connect_and_fail_to_proxy_wait(self):
        r, took = self.get("/dead?ftc=0.2")
        self.assertEqual(r.status, 502)
        self.assertGreaterEqual(took, 0.18)
        r, took = self.get("/dead?ftp=0.2")
        self.assertEqual(r.status, 503)  # fail_to_proxy's choice, after its wait
        self.assertGreaterEqual(took, 0.18)

    def test_logging_waits_after_the_response_and_the_keepalive_connection_goes_on(self):
        since = self.moxy.log_size()
        with Client(self.moxy.port) as c:
            t0 = time.monotonic()
            r = c.request("GET", "/echo?log=1")
            first = time.monotonic() - t0
            self.assert_status(r, 200, self.moxy)
            r = c.request("GET", "/echo?second")  # same connection, while logging sleeps
            both = time.monotonic() - t0
            self.assert_status(r, 200, self.moxy)
        self.assertLess(first, 0.8, "the client waited for logging")
        self.assertLess(both, 0.9, "the keepalive connection waited for logging")
        self.assertNotIn("logging slept", self.moxy.error_log()[since:])
        self.moxy.wait_log("logging slept for /echo?log=1", since, timeout=5 * SLOW)
        line = [ln for ln in self.moxy.error_log()[since:].splitlines() if "logging slept" in ln][0]
        self.assertIn("client=127.0.0.1 up.status=200 up.tries=1", line)
        # The access-log line is written after logging (it may add fields).
        self.assertTrue(any("/echo?log=1" in ln for ln in self.moxy.read("access.log").splitlines()))

    def test_client_gone_while_a_response_phase_or_logging_sleeps(self):
        for target in ("/echo?rf=0.4", "/echo?rbf=0.4", "/echo?urf=0.4", "/echo?log=0.4",
                       "/echo?ctu=0.4", "/dead?ftc=0.4", "/dead?ftp=0.4", "/reset?ewp=0.4",
                       "/bytes?n=1000000&rb=2000000&rb_sleep=0.2", "/trailers?rtf=0.4"):
            s = socket.create_connection(("127.0.0.1", self.moxy.port))
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(0.1)
            s.close()
        s = socket.create_connection(("127.0.0.1", self.moxy.port))
        s.sendall(b"POST /echo?reqf=upper&reqf_sleep=0.4 HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 100000\r\n\r\n" + pattern(50000))
        time.sleep(0.1)
        s.close()
        time.sleep(0.6)
        r, _ = self.get("/echo?after")
        self.assert_status(r, 200, self.moxy)  # ASan checks the cleanup (MoxyTestCase)

    def test_logging_still_runs_once_when_the_client_leaves_while_a_handler_waits(self):
        since = self.moxy.log_size()
        for target in ("/echo?rf=0.3&logerr=1", "/echo?rbf=0.3&logerr=2"):
            s = socket.create_connection(("127.0.0.1", self.moxy.port))
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(0.1)
            s.close()
        # s.req:body() waiting for a body that will not come returns nil, "client_closed"
        s = socket.create_connection(("127.0.0.1", self.moxy.port))
        s.sendall(b"POST /echo?wholebody=1&logerr=3 HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 1000\r\n\r\nabc")
        time.sleep(0.1)
        s.close()
        self.moxy.wait_log("logerr=3 err=client: closed connection", since, timeout=5 * SLOW)
        self.moxy.wait_log("logerr=2 err=", since, timeout=5 * SLOW)
        log = self.moxy.error_log()[since:]
        for n in ("1", "2", "3"):
            lines = [ln for ln in log.splitlines() if f"logerr={n} err=" in ln]
            self.assertEqual(len(lines), 1, lines)
        # (1 and 2: the request was whole, so moxy answered and learnt nothing of the
        # close; 3 was cut in its body: 499.)
        self.assertIn("logerr=3 err=client: closed connection status=499", log)
        self.assertIn("s.req:body() gave nil client_closed", log)

    def test_random_waits_and_clients_that_leave_under_load(self):
        # 8 clients x 25 requests: 3 phases of each wait 0..50 ms, a quarter of the
        # clients leave at a random byte. Every answered request gets a status, nobody
        # hangs, the worker keeps serving (and ASan stays quiet: MoxyTestCase checks).
        import random
        from harness import Reader, build_request, read_response
        rnd = random.Random(7)
        waits = ["urf", "rf", "rbf", "ctu", "log", "rtf", "ftp", "ftc", "ewp", "reqf_sleep"]
        paths = ["/echo", "/bytes?n=70000", "/chunked?n=50000&size=3000", "/trailers",
                 "/dead", "/reset", "/echo?rb=100000", "/bytes?n=200000&rb=1000",
                 "/echo?resp_body=x"]
        plan = []
        for _ in range(200):
            target = rnd.choice(paths)
            q = "&".join(f"{w}={rnd.choice(['0', '0.01', '0.05'])}" for w in rnd.sample(waits, 3))
            if rnd.random() < 0.2:
                q += "&reqf=upper"
            target += ("&" if "?" in target else "?") + q
            body = pattern(rnd.choice([10, 100000])) if rnd.random() < 0.4 else None
            req = build_request("POST" if body else "GET", target, [], body)
            cut = rnd.randint(1, len(req)) if rnd.random() < 0.25 else None
            plan.append((target, "POST" if body else "GET", req, cut))
        bad, lock = [], threading.Lock()

        def client(items):
            for target, method, req, cut in items:
                try:
                    with socket.create_connection(("127.0.0.1", self.moxy.port),
                                                  timeout=10 * SLOW) as s:
                        if cut is not None:
                            s.sendall(req[:cut])
                            continue
                        s.sendall(req)
                        r = read_response(Reader(s), method, partial_ok=True)
                        if r.status not in (200, 502, 503, 504):
                            raise AssertionError(f"status {r.status}")
                except Exception as e:  # noqa: BLE001 - collected and reported below
                    with lock:
                        bad.append(f"{target}: {type(e).__name__} {e}")

        threads = [threading.Thread(target=client, args=(plan[i::8],)) for i in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120 * SLOW)
        self.assertEqual(bad, [])
        self.assert_status(self.get("/echo?after-load")[0], 200, self.moxy)

    # --- errors of the phases that may wait ------------------------------------------

    def test_errors_after_a_wait_follow_the_phase_rules(self):
        since = self.moxy.log_size()
        r, _ = self.get("/echo?urf_boom=1")
        self.assertEqual(r.status, 502)
        r, _ = self.get("/echo?rf_boom=1")
        self.assertEqual(r.status, 500)
        with Client(self.moxy.port) as c:
            c.send(b"GET /chunked?n=50000&size=1000&rbf=0.001&rbf_boom=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            r = c.response(partial_ok=True)  # the head went out: the stream is cut, never a hang
            self.assertEqual(r.status, 200)
            self.assertFalse(r.complete)
            self.assertEqual(r.body, pattern(50000)[:1000].upper())
        log = self.moxy.error_log()[since:]
        for phase, msg in (("upstream_response_filter", "urf boom"),
                           ("response_filter", "rf boom"),
                           ("response_body_filter", "rbf boom")):
            lines = [ln for ln in log.splitlines() if f"lua {phase} " in ln and msg in ln]
            self.assertEqual(len(lines), 1, f"{phase}: {lines}")
            self.assertRegex(lines[0], r"waits\.lua:\d+: " + msg)

    # --- request_body_filter ----------------------------------------------------------

    def test_request_body_filter_replaces_drops_and_goes_chunked(self):
        r, _ = self.get("/echo?reqf=upper", method="POST", body=b"hello world")
        self.assert_status(r, 200, self.moxy)
        seen = r.json()
        self.assertTrue(seen["chunked"])
        self.assertNotIn("content-length", [k.lower() for k, _ in seen["headers"]])
        self.assertEqual(self.origin.requests[-1]["body"], b"HELLO WORLD[end]")
        r, _ = self.get("/echo?reqf=drop", method="POST", body=b"secret")
        self.assertEqual(self.origin.requests[-1]["body"], b"[end]")
        r, _ = self.get("/echo", method="POST", body=b"kept as is")
        self.assertEqual(self.origin.requests[-1]["body"], b"kept as is")

    def test_request_body_filter_waits_per_chunk(self):
        body = pattern(200000)
        r, _ = self.get("/echo?reqf=upper&reqf_sleep=0.001", method="POST", body=body,
                        timeout=30 * SLOW)
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(r.json()["body_len"], len(body) + 5)
        self.assertEqual(self.origin.requests[-1]["body"], body.upper()[:65536])

    def test_origin_answers_while_request_body_filter_waits(self):
        # The response head waits for the filter (one phase at a time), then its own
        # phases and body filter run; the connection closes (the body was not all sent).
        for extra in ("", "&rbf=0.001&rf=0.01"):
            with Client(self.moxy.port, timeout=10 * SLOW) as c:
                c.send(b"POST /early?reqf=upper&reqf_sleep=0.05" + extra.encode()
                       + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n"
                       + pattern(100000))
                r = c.response()
                self.assert_status(r, 200, self.moxy)
                self.assertEqual(r.body, b"EARLY" if extra else b"early")

    def test_request_body_filter_error_is_a_500(self):
        since = self.moxy.log_size()
        r, _ = self.get("/echo?reqf_boom=1", method="POST", body=b"abc")
        self.assertEqual(r.status, 500)
        self.moxy.wait_log("reqf boom", since)
        self.assertRegex(self.moxy.error_log()[since:],
                         r"lua request_body_filter \S*waits\.lua:\d+: reqf boom \(request \d+, POST")

    def test_ten_mib_through_both_body_filters_with_flat_memory(self):
        size = 10 << 20
        body = pattern(size)
        # Warm up (buffers, coroutines, every buffer of the worker's io_uring
        # receive ring), then measure what 10 MiB more costs.
        r, _ = self.get("/echo?reqf=upper", method="POST", body=pattern(4 << 20), timeout=60 * SLOW)
        self.assert_status(r, 200, self.moxy)
        before = rss_kb(self.moxy.pid)
        r, _ = self.get("/echo?reqf=upper", method="POST", body=body, timeout=60 * SLOW)
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(r.json()["body_len"], size + 5)
        r, _ = self.get(f"/bytes?n={size}&rbf=0", timeout=60 * SLOW)
        self.assertEqual(len(r.body), size)
        self.assertEqual(r.body[:1000], body[:1000].upper())
        after = rss_kb(self.moxy.pid)
        print(f"\n    RSS before {before} KiB, after 10 MiB up and 10 MiB down {after} KiB "
              f"(+{after - before} KiB)")
        self.assertLess(after - before, 6 * 1024, "the body was buffered")

    # --- error_while_proxy ------------------------------------------------------------

    def test_error_while_proxy_retries_an_idempotent_request_on_a_reset(self):
        since = self.moxy.log_size()
        r, _ = self.get("/reset?retry=1")
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(r.json()["target"], "/reset?retry=1")
        log = self.moxy.error_log()[since:]
        self.assertIn("error_while_proxy upstream: ECONNRESET try 1", log)
        self.assertIn("error_while_proxy asked for a retry", log)

    def test_error_while_proxy_without_retry_and_for_a_body_is_a_502(self):
        r, _ = self.get("/reset")
        self.assertEqual(r.status, 502)
        since = self.moxy.log_size()
        r, _ = self.get("/reset?retry=1", method="POST", body=b"abc")
        self.assertEqual(r.status, 502)
        self.moxy.wait_log("cannot be resent", since)

    def test_error_while_proxy_may_wait(self):
        r, took = self.get("/reset?ewp=0.2")
        self.assertEqual(r.status, 502)
        self.assertGreaterEqual(took, 0.18)

    # --- peers: timeouts and host names -----------------------------------------------

    def test_peer_read_timeout_takes_effect(self):
        r, took = self.get("/slow?ms=3000&rt=0.3")
        self.assertEqual(r.status, 504)
        self.assertLess(took, 2.5)
        r, _ = self.get("/slow?ms=100&rt=2")
        self.assert_status(r, 200, self.moxy)

    def test_peer_connect_timeout_takes_effect(self):
        # The default is 2 s; moxy.peer{ connect_timeout = 0.3 } wins.
        r, took = self.get("/echo?ct=0.3")
        self.assertEqual(r.status, 504)
        self.assertLess(took, 1.5 * SLOW)
        self.assertGreaterEqual(took, 0.25)

    def test_peer_write_timeout_takes_effect(self):
        # The origin takes nothing: once the buffers are full, 0.3 s without progress.
        size = 64 << 20
        c = socket.create_connection(("127.0.0.1", self.moxy.port), timeout=10 * SLOW)

        def send():
            try:
                c.sendall(f"POST /echo?wt=0.3 HTTP/1.1\r\nHost: x\r\nContent-Length: {size}"
                          f"\r\n\r\n".encode())
                block = b"x" * (1 << 20)
                for _ in range(size >> 20):
                    c.sendall(block)
            except OSError:
                pass

        t0 = time.monotonic()
        threading.Thread(target=send, daemon=True).start()
        from harness import Reader, read_response
        try:
            r = read_response(Reader(c), "POST")
        finally:
            c.close()
        self.assertEqual(r.status, 504)
        self.assertLess(time.monotonic() - t0, 8 * SLOW)

    def test_peer_idle_timeout_takes_effect(self):
        def new_connections(it):
            self.assert_status(self.get(f"/echo?it={it}")[0], 200, self.moxy)
            n = self.idle_origin.connections
            time.sleep(0.6)
            self.assert_status(self.get(f"/echo?it={it}")[0], 200, self.moxy)
            return self.idle_origin.connections - n
        self.assertEqual(new_connections(0.2), 1)  # the pooled connection was closed
        self.assertEqual(new_connections(5), 0)    # kept and reused

    def test_peer_host_names_are_resolved(self):
        n = self.origin.request_count
        r, _ = self.get("/named")  # moxy.peer{ host = "localhost" }
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(r.json()["target"], "/named")
        self.assertEqual(self.origin.request_count, n + 1)
        since = self.moxy.log_size()
        r, _ = self.get("/badname")
        self.assertEqual(r.status, 502)
        self.moxy.wait_log("while resolving the upstream's host name", since)

    # --- buffered responses: s.resp:read_body{max} / s.resp:set_body() -----------------

    def test_read_body_buffers_the_whole_response(self):
        r, _ = self.get("/bytes?n=1000&rb=100000")
        self.assert_status(r, 200, self.moxy)
        self.assertEqual(r.header("x-rb"), "1000")
        self.assertEqual(r.body, pattern(1000))
        r, _ = self.get("/bytes?n=100000&rb=1000000&rb_upper=1")
        self.assertEqual(r.header("x-rb"), "100000")
        self.assertEqual(r.body, pattern(100000).upper())

    def test_read_body_past_max_is_too_large_and_the_body_still_streams(self):
        r, _ = self.get("/bytes?n=100000&rb=1000")
        self.assertEqual(r.header("x-rb"), "too_large")
        self.assertEqual(r.body, pattern(100000))
        # after a wait (the parser was paused at the head), chunked
        r, _ = self.get("/chunked?n=100000&size=3000&rb=50000&rb_sleep=0.05")
        self.assertEqual(r.header("x-rb"), "too_large")
        self.assertEqual(r.body, pattern(100000))

    def test_read_body_then_a_waiting_body_filter(self):
        r, _ = self.get("/bytes?n=100000&rb=1000000&rb_sleep=0.05&rbf=0.001")
        self.assertEqual(r.header("x-rb"), "100000")
        self.assertEqual(r.body, pattern(100000).upper())

    def test_set_body_replaces_the_response_and_the_connection_goes_on(self):
        with Client(self.moxy.port) as c:
            r = c.request("GET", "/bytes?n=200000&resp_body=tiny")
            self.assertEqual(r.body, b"tiny")
            r = c.request("GET", "/echo?resp_body=short")
            self.assertEqual(r.body, b"short")
            r = c.request("HEAD", "/bytes?n=100&rb=100")
            self.assertEqual(r.header("x-rb"), "0")

    # --- session API ------------------------------------------------------------------

    def test_downstream_reused_and_upstream_info(self):
        with Client(self.moxy.port) as c:
            r1 = c.request("GET", "/echo?info=1")
            r2 = c.request("GET", "/echo?info=1")
        self.assertEqual(r1.header("x-reused"), "false")
        self.assertEqual(r2.header("x-reused"), "true")
        addr, status, tries, reused, header = r1.header("x-up").split(" ")
        self.assertEqual((addr, status, tries, header), (self.origin.addr, "200", "1", "true"))

    def test_set_body_replaces_the_body_with_its_length(self):
        r, _ = self.get("/echo?setbody=replaced", method="POST", body=b"original body")
        self.assert_status(r, 200, self.moxy)
        seen = r.json()
        self.assertFalse(seen["chunked"])
        self.assertIn(["Content-Length", "8"], seen["headers"])
        self.assertEqual(self.origin.requests[-1]["body"], b"replaced")

    def test_body_chunks_pulls_the_body_and_it_still_goes_up(self):
        body = pattern(150000)
        r, _ = self.get("/echo?pull=1", method="POST", body=body, timeout=30 * SLOW)
        self.assert_status(r, 200, self.moxy)
        seen = {k.lower(): v for k, v in r.json()["headers"]}
        self.assertEqual(seen["x-pulled-bytes"], str(len(body)))
        self.assertEqual(r.json()["body_len"], len(body))


class WaitBeforeTunnel(MoxyTestCase):
    """A 101 whose response_filter waits: the tunnel starts once the filter is done."""

    @classmethod
    def setup_class(cls):
        import tempfile
        cls.origin = cls.class_origin()
        path = script("waits.lua", tempfile.mkdtemp(prefix="moxy-lua-"),
                      ORIGIN_PORT=cls.origin.port, DEAD_PORT=free_port(), RESET_PORT=free_port(),
                      EARLY_PORT=free_port(), BLACKHOLE_PORT=free_port(),
                      SINK_PORT=free_port(), IDLE_PORT=free_port())
        conf = config([{"name": "web", "listeners": [f"127.0.0.1:{free_port()}"],
                        "script": path}], {"origin": upstream(cls.origin.port)}, threads=1)
        cls.moxy = cls.class_moxy(conf)

    def test_websocket_after_a_waiting_response_filter(self):
        import base64
        from harness import ws_accept, ws_frame, ws_read
        key = base64.b64encode(os.urandom(16)).decode()
        with Client(self.moxy.port) as c:
            r = c.request("GET", "/ws?rf=0.2&urf=0.1",
                          [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                           ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")])
            self.assert_status(r, 101, self.moxy)
            self.assertEqual(r.header("sec-websocket-accept"), ws_accept(key))
            self.assertEqual(r.header("x-rf"), "slept")
            for msg in (b"hello", pattern(70000)):
                c.send(ws_frame(2, msg))
                fin, op, payload, masked = ws_read(c.reader)
                self.assertEqual(payload, msg)
            c.send(ws_frame(8, b"\x03\xe8bye"))
            self.assertEqual(ws_read(c.reader)[1:3], (8, b"\x03\xe8bye"))


class StopWhileLoggingWaits(MoxyTestCase):
    """A session whose logging waits after its connection went: a graceful stop waits
    for it, a fast stop (SIGINT) drops it."""

    def start(self):
        import tempfile
        self.origin = self.start_origin()
        path = script("waits.lua", tempfile.mkdtemp(prefix="moxy-lua-"),
                      ORIGIN_PORT=self.origin.port, DEAD_PORT=free_port(), RESET_PORT=free_port(),
                      EARLY_PORT=free_port(), BLACKHOLE_PORT=free_port(),
                      SINK_PORT=free_port(), IDLE_PORT=free_port())
        conf = config([{"name": "web", "listeners": [f"127.0.0.1:{free_port()}"],
                        "script": path}], {"origin": upstream(self.origin.port)}, threads=1,
                      grace_period_seconds=0)
        return self.start_moxy(conf)

    def test_graceful_stop_waits_for_logging(self):
        m = self.start()
        r = request(m.port, "GET", "/echo?log=0.8")
        self.assert_status(r, 200, m)
        m.signal(signal.SIGTERM)
        self.assertEqual(m.wait_exit(10 * SLOW), 0)
        self.assertIn("logging slept for /echo?log=0.8", m.error_log())

    def test_fast_stop_drops_a_waiting_logging(self):
        m = self.start()
        r = request(m.port, "GET", "/echo?log=60")
        self.assert_status(r, 200, m)
        t0 = time.monotonic()
        m.signal(signal.SIGINT)
        m.wait_exit(10 * SLOW)
        self.assertLess(time.monotonic() - t0, 5 * SLOW)
        self.assertNotIn("logging slept", m.error_log())
