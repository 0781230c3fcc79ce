"""moxy.tcp, moxy.http, moxy.thread and waiting timer functions, live: the script
tests/integration/lua/io.lua in the real binary, talking to the harness origin and to
a small line-protocol server (PING x -> PONG x) over TCP and a unix socket."""
import os
import socket
import tempfile
import threading
import time

from harness import (SLOW, Client, MoxyTestCase, config, free_port, pattern, request, upstream,
                     wait_for)
from test_lua import script


class LineServer:
    """Threaded line server: 'PING x' -> 'PONG x', 'SLOW ms x' -> sleeps, then 'PONG x',
    'BIG n' -> n pattern bytes then a line. Counts connections."""

    def __init__(self, unix_path=None):
        self.unix_path = unix_path
        self.connections = 0
        self.lock = threading.Lock()
        self.stopping = False
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.bind(unix_path)
        else:
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(10)
        buf = b""
        try:
            while True:
                data = c.recv(4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    words = line.decode().split()
                    if words and words[0] == "GET":
                        # HTTP: a body of <n> pattern bytes delimited by the close.
                        while not buf.startswith(b"\r\n") and b"\r\n\r\n" not in buf:
                            buf += c.recv(4096)
                        n = int(words[1].strip("/"))
                        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: x/y\r\n\r\n" + pattern(n))
                        return
                    if words[0] == "PING":
                        c.sendall(f"PONG {words[1]}\r\n".encode())
                    elif words[0] == "SLOW":
                        time.sleep(int(words[1]) / 1000)
                        c.sendall(f"PONG {words[2]}\r\n".encode())
                    elif words[0] == "BIG":
                        c.sendall(pattern(int(words[1])) + b"end\n")
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.stopping = True
        self.sock.close()
        self.thread.join(2)


class LuaIO(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        cls.origin = cls.class_origin()
        cls.line = LineServer()
        cls.addClassCleanup(cls.line.stop)
        d = tempfile.mkdtemp(prefix="moxy-io-")
        cls.unix_path = os.path.join(d, "line.sock")
        cls.line_unix = LineServer(cls.unix_path)
        cls.addClassCleanup(cls.line_unix.stop)
        path = script("io.lua", d, ORIGIN_PORT=cls.origin.port, LINE_PORT=cls.line.port,
                      LINE_UNIX=cls.unix_path, DEAD_PORT=free_port())
        conf = config([{"name": "web", "listeners": [f"127.0.0.1:{free_port()}"], "script": path,
                        "upstream": "origin"}],
                      {"origin": upstream(cls.origin.port)}, threads=1, log_level="info")
        cls.moxy = cls.class_moxy(conf)

    def get(self, target, **kw):
        return request(self.moxy.port, "GET", target, **kw)

    # --- moxy.http from request_filter: an auth service ---------------------------------

    def test_auth_service_lets_a_good_token_through(self):
        r = self.get("/auth", headers=[("X-Token", "good")])
        self.assert_status(r, 200, self.moxy)
        seen = {k.lower(): v for k, v in r.json()["headers"]}
        self.assertEqual(seen.get("x-auth-status"), "ok")
        checks = [q for q in self.origin.requests if q["target"] == "/status?code=200"]
        self.assertTrue(checks, "the auth call never reached the origin")
        self.assertIn(("x-check", "token"), [(k.lower(), v) for k, v in checks[-1]["headers"]])

    def test_auth_service_refuses_a_bad_token(self):
        r = self.get("/auth", headers=[("X-Token", "bad")])
        self.assert_status(r, 401, self.moxy)
        self.assertEqual(r.body, b"denied by auth (403)\n")

    # --- moxy.http framing and errors ---------------------------------------------------

    def test_content_length_body(self):
        r = self.get("/http?u=/bytes%3Fn%3D70000")
        head, body = r.body.split(b"\n", 1)
        self.assertEqual(head, b"200 70000 application/octet-stream")
        self.assertEqual(body, pattern(70000))

    def test_chunked_body(self):
        r = self.get("/http?u=/chunked%3Fn%3D100000%26size%3D3000")
        head, body = r.body.split(b"\n", 1)
        self.assertEqual(head.split()[:2], [b"200", b"100000"])
        self.assertEqual(body, pattern(100000))

    def test_post_sends_the_body_with_its_length(self):
        r = self.get("/http?u=/echo&m=POST&body=hello")
        rec = __import__("json").loads(r.body.split(b"\n", 1)[1])
        self.assertEqual(rec["method"], "POST")
        self.assertEqual(rec["body_len"], 5)
        self.assertFalse(rec["chunked"])

    def test_errors(self):
        cases = {
            "/http?u=/slow%3Fms%3D1500&timeout=0.2": b"error timeout",
            "/http?u=/bytes%3Fn%3D5000&max=100": b"error too_large",
            "/http?u=/chunked%3Fn%3D5000%26size%3D100&max=1000": b"error too_large",
            "/http?u=/bad-cl": b"error bad_response",
            "/http?u=/close-mid-body": b"error closed",
        }
        for target, want in cases.items():
            r = self.get(target)
            self.assert_status(r, 200, self.moxy)
            self.assertTrue(r.body.startswith(want), f"{target}: {r.body[:200]!r}")

    def test_keepalive_connection_count(self):
        before = self.origin.connections
        for i in range(6):
            r = self.get(f"/http?u=/echo%3Fka%3D{i}")
            self.assertTrue(r.body.startswith(b"200 "), r.body[:100])
        self.assertLessEqual(self.origin.connections - before, 1,
                             "moxy.http opened a connection per request")

    def test_body_delimited_by_the_close(self):
        r = self.get("/http-close?n=70000&max=100000")
        head, body = r.body.split(b"\n", 1)
        self.assertEqual(head, b"200 70000 x/y")
        self.assertEqual(body, pattern(70000))
        r = self.get("/http-close?n=300000&max=100000")
        self.assertTrue(r.body.startswith(b"error too_large"), r.body[:100])

    def test_no_body_for_204(self):
        r = self.get("/http?u=/status%3Fcode%3D204")
        self.assertTrue(r.body.startswith(b"204 0 "), r.body)

    def test_https_is_refused_until_tls_exists(self):
        self.assertEqual(self.get("/https").body, b"nil tls")

    # --- moxy.tcp -----------------------------------------------------------------------

    def test_tcp_line_protocol_and_keepalive_reuse(self):
        before = self.line.connections
        results = [self.get(f"/line?name=n{i}").body.decode() for i in range(4)]
        self.assertEqual(results[0].split("|")[0], "PONG n0")
        self.assertEqual([r.split("|")[0] for r in results], [f"PONG n{i}" for i in range(4)])
        reused = [int(r.split("reused=")[1]) for r in results]
        self.assertEqual(reused[1:], [reused[0] + 1, reused[0] + 2, reused[0] + 3])
        self.assertGreater(reused[-1], 0)
        self.assertLessEqual(self.line.connections - before, 1)

    def test_tcp_resolves_names(self):
        r = self.get("/line?name=byname&host=localhost")
        self.assertTrue(r.body.startswith(b"PONG byname"), r.body)

    def test_tcp_unix_socket(self):
        r = self.get("/line-unix?name=u1")
        self.assertTrue(r.body.startswith(b"PONG u1|reused="), r.body)

    def test_tcp_read_timeout(self):
        t0 = time.monotonic()
        r = self.get("/line-slow?ms=1500&timeout=200")
        self.assert_status(r, 504, self.moxy)
        self.assertEqual(r.body, b"receive: timeout partial=")
        self.assertLess(time.monotonic() - t0, 1.2 * SLOW)

    def test_tcp_read_timeout_keeps_the_socket(self):
        self.assertEqual(self.get("/line-timeout-retry").body, b"nil timeout PONG late")

    def test_tcp_setkeepalive_refuses_unread_data(self):
        self.assertEqual(self.get("/unread").body, b"5 nil unread data in buffer closed")

    def test_tcp_one_operation_at_a_time(self):
        self.assertEqual(self.get("/close-busy").body, b"false socket busy false socket busy PONG z")

    def test_tcp_errors(self):
        self.assertEqual(self.get("/refused").body, b"nil connection refused")
        r = self.get("/unresolvable")
        self.assertRegex(r.body.decode(), r"^nil no-such-host\.invalid could not be resolved \(")
        self.assertEqual(self.get("/closed-ops").body, b"closed,closed,closed")

    def test_tcp_byte_counts_and_receiveuntil(self):
        r = self.get("/line-big?n=100000")
        self.assertEqual(r.body, b"100000 " + pattern(100000)[:4] + b" rest=3")
        self.assertEqual(self.get("/line-until").body,
                         b"PONG a,b,c|PONG, abc,defg,hij,nil:nil|x-|y")

    # --- threads ------------------------------------------------------------------------

    def test_two_parallel_calls_take_the_max_not_the_sum(self):
        r = self.get("/parallel?ms=700")
        ok1, r1, ok2, r2, elapsed = r.body.decode().split()
        self.assertEqual((ok1, r1, ok2, r2), ("true", "200", "true", "200"))
        self.assertGreaterEqual(float(elapsed), 0.65)
        self.assertLess(float(elapsed), 1.3, "the two calls ran one after the other")

    def test_kill_cancels_a_sleep_and_a_pending_call(self):
        r = self.get("/kill")
        k1, k2, ok, err, elapsed = r.body.decode().split()
        self.assertEqual((k1, k2, ok, err), ("true", "true", "false", "killed"))
        self.assertLess(float(elapsed), 1.0)

    def test_finished_threads_and_timers_are_collected(self):
        # LuaJIT has no ephemerons: a table keyed weakly by coroutine whose value points back
        # to it kept every thread's coroutine alive (about 3 KB a request).
        def rounds(n):
            for _ in range(n):
                self.assertEqual(self.get("/spawn-many").body, b"ok")
                self.assertEqual(self.get("/timer-http").body, b"armed")
            time.sleep(0.3)
            return int(self.get("/lua-mem").body)
        rounds(20)
        m1 = rounds(40)
        m2 = rounds(40)
        self.assertLess(m2 - m1, 300, f"Lua memory grew from {m1} KB to {m2} KB")

    def test_an_error_in_a_thread_is_returned_and_logged(self):
        size = self.moxy.log_size()
        r = self.get("/thread-error")
        self.assertRegex(r.body.decode(), r"^false .*io\.lua:\d+: boom in thread$")
        self.assertTrue(self.moxy.wait_log("lua thread", since=size), self.moxy.diagnostics())

    def test_a_phase_ends_after_its_threads(self):
        r = self.get("/unwaited")
        self.assert_status(r, 200, self.moxy)
        seen = {k.lower(): v for k, v in r.json()["headers"]}
        self.assertEqual(seen.get("x-threads-done"), "2")

    # --- timers and clients that go away ------------------------------------------------

    def test_a_timer_function_calls_moxy_http(self):
        self.assertEqual(self.get("/timer-http").body, b"armed")
        ok = wait_for(lambda: self.get("/timer-result").body == b"status 200", 3 * SLOW)
        self.assertTrue(ok, self.get("/timer-result").body)
        self.assertIn("/echo?from=timer", self.origin.targets())

    def test_client_gone_while_waiting_on_a_slow_call(self):
        size = self.moxy.log_size()
        for _ in range(3):
            with Client(self.moxy.port) as c:
                c.send(b"GET /http-slow?ms=800 HTTP/1.1\r\nHost: x\r\n\r\n")
                time.sleep(0.15)
        # The worker goes on serving (and under ASan nothing was touched after free).
        r = self.get("/line?name=after")
        self.assertTrue(r.body.startswith(b"PONG after"), r.body)
        time.sleep(1.0)
        r = self.get("/http?u=/echo%3Fafter")
        self.assertTrue(r.body.startswith(b"200 "), r.body[:100])
        self.assertNotIn("[error]", self.moxy.error_log()[size:])

    def test_client_gone_while_its_threads_wait(self):
        size = self.moxy.log_size()
        for _ in range(3):
            with Client(self.moxy.port) as c:
                c.send(b"GET /parallel?ms=600 HTTP/1.1\r\nHost: x\r\n\r\n")
                time.sleep(0.1)
        r = self.get("/kill")
        self.assertTrue(r.body.startswith(b"true true false killed"), r.body)
        time.sleep(0.8)
        self.assertNotIn("[error]", self.moxy.error_log()[size:])


class LuaIOShutdown(MoxyTestCase):
    def test_a_timer_still_waiting_is_cancelled_when_the_grace_ends(self):
        line = LineServer()
        self.addCleanup(line.stop)
        origin = self.start_origin()
        d = tempfile.mkdtemp(prefix="moxy-io-")
        path = script("io.lua", d, ORIGIN_PORT=origin.port, LINE_PORT=line.port,
                      LINE_UNIX=os.path.join(d, "none.sock"), DEAD_PORT=free_port())
        conf = config([{"name": "web", "listeners": [f"127.0.0.1:{free_port()}"], "script": path,
                        "upstream": "origin"}],
                      {"origin": upstream(origin.port)}, threads=1, log_level="info",
                      grace_period_seconds=0, graceful_shutdown_timeout_seconds=1)
        m = self.start_moxy(conf)
        for i in range(3):   # idle pooled connections must not hold the worker either
            self.assertTrue(request(m.port, "GET", f"/line?name=p{i}").body.startswith(b"PONG"))
        self.assertEqual(request(m.port, "GET", "/timer-sleep").body, b"armed")
        time.sleep(0.3)     # the timer connects (a pooled connection) and waits
        t0 = time.monotonic()
        self.assertEqual(m.stop(timeout=10 * SLOW), 0, m.diagnostics())
        self.assertLess(time.monotonic() - t0, 6 * SLOW)
        self.assertIn("still waiting at shutdown", m.error_log())
