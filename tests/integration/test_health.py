"""Active health checks and DNS discovery, end to end.

Three real origins (Python http.server on free ports, each answering with its
name) behind moxy; a bounded client sends continuous traffic while one origin
is stopped and restarted on the same port. After the check that marks it down
no client may see a 5xx while a healthy backend remains; once `rise` checks
pass again it gets traffic again; both transitions are in the error log.
Between the down check and the restart no request even tries the stopped
origin (no connect error names it). The TCP variant runs with max_retries 0
and passive health off, so that only the active check keeps clients from a
5xx. An HTTP check that answers an unexpected status (or lacks
expected_body) takes a backend out although it still serves.

DNS re-resolution: moxy runs in a private mount namespace (unshare -rm) whose
/etc/hosts is a file of the test, bind-mounted; the test rewrites it and moxy
re-resolves the name every resolve_interval. The product code is the real
getaddrinfo path; only the hosts file is the test's.
"""
import json
import os
import re
import socket
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import (SLOW, Moxy, MoxyError, MoxyTestCase, ProtocolError, config, free_port,
                     moxy_bin, moxy_env, port_open, request, service, wait_for, REPO)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"   # one request per connection: a stopped origin is gone

    def do_GET(self):
        o = self.server.origin
        if self.path == "/health":
            code = o.health_status
            with o.lock:
                o.checks += 1
        else:
            code = 200
            with o.lock:
                o.hits += 1
        body = o.name.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class NamedOrigin:
    """An HTTP origin on host:port that answers its name; stop() and start()
    again reuse the port. .hits counts non-health requests, .checks /health."""

    def __init__(self, name, host="127.0.0.1", port=0):
        self.name, self.host, self.port = name, host, port
        self.lock = threading.Lock()
        self.hits = self.checks = 0
        self.health_status = 200
        self.server = None

    def start(self):
        deadline = time.monotonic() + 5
        while True:
            try:
                self.server = ThreadingHTTPServer((self.host, self.port), _Handler)
                break
            except OSError:          # the port may linger a moment after a stop
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.server.daemon_threads = True
        self.server.origin = self
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def addr(self):
        return f"{self.host}:{self.port}"


class Traffic:
    """Bounded clients: <n> threads send GETs one after another (a fresh
    connection each) until stop(); every outcome is kept with its start time."""

    def __init__(self, port, n=2, pause=0.01):
        self.port, self.pause = port, pause
        self.results = []          # (t_start, status or error text, body, target)
        self.lock = threading.Lock()
        self.running = True
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, k):
        i = 0
        while self.running:
            t0 = time.monotonic()
            target = f"/t?c={k}&i={i}"          # unique: its error-log lines can be found
            try:
                r = request(self.port, "GET", target, timeout=5 * SLOW)
                out = (t0, r.status, r.body.decode("latin-1"), target)
            except (OSError, EOFError, ProtocolError) as e:
                out = (t0, f"{type(e).__name__}: {e}", "", target)
            with self.lock:
                self.results.append(out)
            i += 1
            time.sleep(self.pause)

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join(10 * SLOW)

    def since(self, t):
        with self.lock:
            return [r for r in self.results if r[0] >= t]

    def between(self, t0, t1):
        with self.lock:
            return [r for r in self.results if t0 <= r[0] < t1]


def bad(results):
    return [r for r in results if not (isinstance(r[1], int) and r[1] < 500)]


class HealthCheckBase(MoxyTestCase):
    def start_named(self, name, host="127.0.0.1", port=0):
        o = NamedOrigin(name, host, port).start()
        self.addCleanup(o.stop)
        return o

    def wait_log_at(self, m, needle, timeout):
        """The monotonic time at which <needle> was first seen in the error log (or None)."""
        ok = wait_for(lambda: needle in m.error_log(), timeout, step=0.02)
        return time.monotonic() if ok else None

    def three(self, check, **up):
        a, b, c = (self.start_named(n) for n in "abc")
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [a.addr, b.addr, c.addr], "connect_timeout": 1,
                                  "read_timeout": 5, "health_check": check, **up}},
                      threads=2)
        return a, b, c, self.start_moxy(conf)

    def stop_and_restart(self, check, kind, strict=False):
        """The scenario of issue 4 with a check of <kind>; returns what it measured.
        strict: no failover and no passive health, so that after the down check
        only the active check keeps clients away from the stopped origin."""
        up = {"max_retries": 0, "passive_health": {"max_fails": 0}} if strict else {}
        a, b, c, m = self.three(check, **up)
        traffic = Traffic(m.port)
        self.addCleanup(traffic.stop)
        # Everyone serves first.
        self.assertTrue(wait_for(lambda: min(a.hits, b.hits, c.hits) >= 3, 10 * SLOW),
                        f"not every origin got traffic: {a.hits} {b.hits} {c.hits}\n{m.diagnostics()}")

        t_stop = time.monotonic()
        b.stop()
        down = f"upstream origin backend {b.addr} is down ({kind} check:"
        t_down = self.wait_log_at(m, down, 10 * SLOW)
        self.assertIsNotNone(t_down, f"no '{down}' in the error log\n{m.diagnostics()}")
        hits_down = b.hits
        time.sleep(1.5 * SLOW)                       # many requests while b is down
        n_restart = m.log_size()
        t_restart = time.monotonic()
        b.start()                                    # same port
        up = f"upstream origin backend {b.addr} is up (2 checks passed)"
        t_up = self.wait_log_at(m, up, 10 * SLOW)
        self.assertIsNotNone(t_up, f"no '{up}' in the error log\n{m.diagnostics()}")
        self.assertTrue(wait_for(lambda: b.hits > hits_down, 5 * SLOW),
                        f"the restarted origin gets no traffic\n{m.diagnostics()}")
        traffic.stop()

        after = traffic.since(t_down)
        self.assertGreater(len(after), 50, "too little traffic to say anything")
        self.assertEqual(bad(after), [], f"a client saw an error after the down check\n{m.diagnostics()}")
        # Between the stop and the first failed check: a request the stopped
        # origin had already taken (sent, in its accept queue) may fail — GET
        # is not resent once sent — but a refused connect must fail over to
        # another backend (max_retries) and never reach the client.
        window = traffic.between(t_stop, t_down)
        log = m.error_log()
        # Between the down check and the restart no request even tried b. A
        # request that chose b just before the verdict was stored may log its
        # failed connect after the down line (a worker slowed by ASan does):
        # only requests the client sent after it saw the down line count.
        n_down = log.find(down)
        started = {r[3]: r[0] for r in traffic.results}
        tried = []
        for l in log[n_down:n_restart].splitlines():
            if f'upstream: "{b.addr}"' not in l:
                continue
            target = re.search(r'"GET (\S+) HTTP/1\.1"', l)
            if target is None or started.get(target.group(1), t_down) >= t_down:
                tried.append(l)
        self.assertEqual(tried, [], "requests sent after the down check still tried the down backend")
        for r in bad(window) if not strict else ():
            lines = [l for l in log.splitlines() if f'"GET {r[3]} HTTP/1.1"' in l]
            self.assertTrue(lines, f"no log line for the failed {r}")
            self.assertFalse(any("while connecting to upstream" in l for l in lines[-1:]),
                             f"a refused connect reached the client: {r}\n" + "\n".join(lines))
        self.assertEqual(len(re.findall(re.escape(down), m.error_log())), 1, "down logged more than once")
        self.assertEqual(len(re.findall(re.escape(up), m.error_log())), 1, "up logged more than once")
        # rise 2 at the check interval: not before the second check after the restart.
        interval = check["interval"]
        self.assertGreaterEqual(t_up - t_restart, interval * 0.9,
                                "marked up before two checks could have passed")
        refused = sum(1 for r in window if f'"GET {r[3]} HTTP/1.1"' in log and isinstance(r[1], int)
                      and r[1] < 500)
        return {"requests": len(traffic.results), "after_down": len(after),
                "stop_window": len(window), "stop_window_errors": len(bad(window)),
                "stop_window_failed_over": refused,
                "stop_to_down_s": round(t_down - t_stop, 3), "restart_to_up_s": round(t_up - t_restart, 3)}


class HttpCheck(HealthCheckBase):
    def test_stopped_origin_leaves_and_rejoins_without_client_errors(self):
        check = {"type": "http", "path": "/health", "interval": 0.3, "rise": 2, "fall": 1,
                 "timeout": 0.5 * SLOW}
        stats = self.stop_and_restart(check, "http")
        print(f"    http check: {stats}")

    def test_unexpected_status_takes_a_backend_out_although_it_serves(self):
        check = {"type": "http", "path": "/health", "interval": 0.2, "rise": 2, "fall": 2,
                 "timeout": 1, "expected_statuses": [200]}
        a, b, c, m = self.three(check)
        self.assertTrue(wait_for(lambda: b.checks >= 2, 5 * SLOW), "no health checks reach b")
        self.assertEqual(b.hits, 0, "checks are not counted as traffic")
        b.health_status = 503
        down = f"upstream origin backend {b.addr} is down (http check: status 503, 2 fails)"
        self.assertIsNotNone(self.wait_log_at(m, down, 10 * SLOW), m.diagnostics())
        before = b.hits
        for i in range(12):
            r = request(m.port, "GET", f"/x{i}")
            self.assert_status(r, 200, m)
            self.assertNotEqual(r.body, b"b")
        self.assertEqual(b.hits, before)
        b.health_status = 204             # not in expected_statuses: [200]
        time.sleep(1 * SLOW)
        self.assertNotIn(f"backend {b.addr} is up", m.error_log())
        b.health_status = 200
        up = f"upstream origin backend {b.addr} is up (2 checks passed)"
        self.assertIsNotNone(self.wait_log_at(m, up, 10 * SLOW), m.diagnostics())
        seen = {request(m.port, "GET", f"/y{i}").body for i in range(9)}
        self.assertEqual(seen, {b"a", b"b", b"c"})

    def test_expected_body_takes_out_a_backend_whose_check_lacks_it(self):
        a, b = self.start_named("ready"), self.start_named("warming-up")
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [a.addr, b.addr], "health_check":
                                  {"type": "http", "path": "/health", "interval": 0.2, "fall": 1,
                                   "expected_body": "ready"}}})
        m = self.start_moxy(conf)
        down = (f"upstream origin backend {b.addr} is down (http check: status 200 without the "
                f"expected body, 1 fail)")
        self.assertIsNotNone(self.wait_log_at(m, down, 10 * SLOW), m.diagnostics())
        self.assertEqual({request(m.port, "GET", f"/b{i}").body for i in range(6)}, {b"ready"})
        self.assertNotIn(f"backend {a.addr} is down", m.error_log())

    def test_checks_send_method_path_host_and_headers(self):
        got = []

        class Recorder(_Handler):
            def do_GET(self):
                got.append((self.command, self.path, self.headers.get("Host"),
                            self.headers.get("User-Agent"), self.headers.get("X-Check")))
                super().do_GET()

            do_HEAD = do_GET

        o = NamedOrigin("r")
        o.server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        o.server.origin, o.server.daemon_threads = o, True
        o.port = o.server.server_address[1]
        threading.Thread(target=o.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.addCleanup(o.stop)
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [o.addr], "health_check":
                                  {"type": "http", "path": "/health?deep=1", "host": "app.example",
                                   "method": "HEAD", "headers": {"X-Check": "from moxy"},
                                   "interval": 0.1}}})
        m = self.start_moxy(conf)
        self.assertTrue(wait_for(lambda: len(got) >= 2, 5 * SLOW), m.diagnostics())
        self.assertEqual(got[0], ("HEAD", "/health?deep=1", "app.example", "moxy-health-check",
                                  "from moxy"))
        self.assertNotIn("is down", m.error_log())


class TcpCheck(HealthCheckBase):
    def test_stopped_origin_leaves_and_rejoins_without_client_errors(self):
        # No failover and no passive health here: only the check protects clients.
        check = {"type": "tcp", "interval": 0.3, "rise": 2, "fall": 1, "timeout": 0.5 * SLOW}
        stats = self.stop_and_restart(check, "tcp", strict=True)
        print(f"    tcp check, max_retries 0, passive health off: {stats}")

    def test_backend_dead_at_start_is_down_after_fall_checks(self):
        a = self.start_named("a")
        dead = free_port()
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [a.addr, f"127.0.0.1:{dead}"], "connect_timeout": 1,
                                  "health_check": {"type": "tcp", "interval": 0.2, "fall": 2}}})
        m = self.start_moxy(conf)
        down = f"upstream origin backend 127.0.0.1:{dead} is down (tcp check: connection refused, 2 fails)"
        self.assertIsNotNone(self.wait_log_at(m, down, 10 * SLOW), m.diagnostics())
        n = m.log_size()
        for i in range(10):
            self.assert_status(request(m.port, "GET", f"/z{i}"), 200, m)
        # No request even tried the dead backend: no connect error was logged.
        self.assertNotIn(f"127.0.0.1:{dead}", m.error_log()[n:])


class Shutdown(HealthCheckBase):
    def test_stop_is_prompt_with_checks_in_flight(self):
        # A backend that accepts and never answers keeps a check in flight.
        import socket
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        self.addCleanup(silent.close)
        a = self.start_named("a")
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [a.addr, f"127.0.0.1:{silent.getsockname()[1]}"],
                                  "health_check": {"type": "http", "interval": 0.1, "timeout": 30}}})
        m = self.start_moxy(conf)
        time.sleep(0.5)
        t0 = time.monotonic()
        m.signal(2)                                  # SIGINT: fast stop
        self.assertEqual(m.wait_exit(10 * SLOW), 0, m.diagnostics())
        self.assertLess(time.monotonic() - t0, 3 * SLOW)


def _unshare_works():
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class NamespacedMoxy(Moxy):
    """moxy in its own mount namespace where /etc/hosts is <hosts> (bind-mounted)."""

    def __init__(self, conf, hosts, resolv=None):
        self.hosts, self.resolv = hosts, resolv
        super().__init__(conf, start=False)

    def start(self, timeout=5 * SLOW):
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        if self.resolv:
            script = f'mount --bind "{self.resolv}" /etc/resolv.conf && ' + script
        err = open(self.stderr_path, "ab")
        out = open(self.path("stdout.log"), "ab")
        self._files += [err, out]
        self.proc = subprocess.Popen(["unshare", "-rm", "sh", "-c", script, self.hosts, moxy_bin(),
                                      "-c", self.config_path], stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=err, cwd=REPO, env=moxy_env())
        deadline = time.monotonic() + timeout
        while not port_open(self.port, 0.2):
            if self.proc.poll() is not None:
                raise MoxyError(f"moxy exited with {self.proc.returncode}\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                self.stop()
                raise MoxyError(f"moxy did not listen\n{self.diagnostics()}")
            time.sleep(0.05)
        return self


@unittest.skipUnless(_unshare_works(), "needs unshare -rm (user and mount namespaces)")
class DnsDiscovery(HealthCheckBase):
    def write_hosts(self, *ips):
        # In place (same inode): the bind mount shows the file, not the name.
        with open(self.hosts, "w") as f:
            f.write("127.0.0.1 localhost\n" + "".join(f"{ip} app.test\n" for ip in ips))

    def test_a_changed_name_moves_traffic_without_a_restart(self):
        port = free_port()
        x = self.start_named("x", "127.0.0.2", port)
        y = self.start_named("y", "127.0.0.3", port)
        tmp = tempfile.mkdtemp(prefix="moxy-dns-")
        self.addCleanup(shutil.rmtree, tmp, True)
        self.hosts = os.path.join(tmp, "hosts")
        self.write_hosts("127.0.0.2")
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [f"app.test:{port}"], "resolve_interval": 0.3,
                                  "connect_timeout": 1, "read_timeout": 5}})
        m = NamespacedMoxy(conf, self.hosts)
        self.addCleanup(m.cleanup)
        self._test_moxies.append(m)
        m.start()

        def bodies(n):
            return [request(m.port, "GET", f"/d{i}").body.decode() for i in range(n)]

        self.assertEqual(set(bodies(6)), {"x"}, m.diagnostics())
        self.write_hosts("127.0.0.3")
        moved = f"upstream origin: app.test:{port} resolves to 127.0.0.3:{port} (was 127.0.0.2:{port})"
        self.assertIsNotNone(self.wait_log_at(m, moved, 10 * SLOW), m.diagnostics())
        self.assertEqual(set(bodies(6)), {"y"}, m.diagnostics())

        self.write_hosts("127.0.0.3", "127.0.0.2")     # one name, two addresses: both serve
        both = f"resolves to 127.0.0.2:{port}, 127.0.0.3:{port} (was 127.0.0.3:{port})"
        self.assertIsNotNone(self.wait_log_at(m, both, 10 * SLOW), m.diagnostics())
        self.assertEqual(set(bodies(10)), {"x", "y"}, m.diagnostics())

        self.write_hosts()                              # the name vanishes: the last answer stays
        gone = "upstream origin: cannot resolve app.test"
        self.assertIsNotNone(self.wait_log_at(m, gone, 10 * SLOW), m.diagnostics())
        self.assertEqual(set(bodies(10)), {"x", "y"}, m.diagnostics())

    def test_ketama_keys_stay_put_when_a_name_moves(self):
        port = free_port()
        a = self.start_named("a")
        x = self.start_named("x", "127.0.0.2", port)
        y = self.start_named("y", "127.0.0.3", port)
        tmp = tempfile.mkdtemp(prefix="moxy-dns-")
        self.addCleanup(shutil.rmtree, tmp, True)
        self.hosts = os.path.join(tmp, "hosts")
        self.write_hosts("127.0.0.2")
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [a.addr, f"app.test:{port}"], "algorithm": "ketama",
                                  "resolve_interval": 0.3}})
        m = NamespacedMoxy(conf, self.hosts)
        self.addCleanup(m.cleanup)
        self._test_moxies.append(m)
        m.start()

        def placement():
            return [request(m.port, "GET", f"/k{i}").body.decode() for i in range(40)]

        before = placement()
        self.assertEqual(set(before), {"a", "x"}, "ketama did not use both backends")
        self.write_hosts("127.0.0.3")
        moved = f"app.test:{port} resolves to 127.0.0.3:{port}"
        self.assertIsNotNone(self.wait_log_at(m, moved, 10 * SLOW), m.diagnostics())
        after = placement()
        # Keys of the static backend did not move; the name's keys followed it to y.
        self.assertEqual(after, ["y" if b == "x" else b for b in before])

    def test_a_name_with_two_addresses_at_start_gives_two_backends(self):
        port = free_port()
        x = self.start_named("x", "127.0.0.2", port)
        y = self.start_named("y", "127.0.0.3", port)
        tmp = tempfile.mkdtemp(prefix="moxy-dns-")
        self.addCleanup(shutil.rmtree, tmp, True)
        self.hosts = os.path.join(tmp, "hosts")
        z = self.start_named("z", "127.0.0.4", port)
        self.write_hosts("127.0.0.2", "127.0.0.3")
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [f"app.test:{port}"], "resolve_interval": 0.3,
                                  "health_check": {"type": "tcp", "interval": 0.2}}})
        m = NamespacedMoxy(conf, self.hosts)
        self.addCleanup(m.cleanup)
        self._test_moxies.append(m)
        m.start()
        seen = [request(m.port, "GET", f"/s{i}").body.decode() for i in range(10)]
        self.assertEqual(set(seen), {"x", "y"}, m.diagnostics())
        y.stop()
        down = f"upstream origin backend app.test:{port} (127.0.0.3:{port}) is down"
        self.assertIsNotNone(self.wait_log_at(m, down, 10 * SLOW), m.diagnostics())
        self.assertEqual({request(m.port, "GET", f"/s{i}").body.decode() for i in range(6)}, {"x"})
        # A third address joins: the two kept backends keep their state (y stays down).
        self.write_hosts("127.0.0.2", "127.0.0.3", "127.0.0.4")
        added = f"resolves to 127.0.0.2:{port}, 127.0.0.3:{port}, 127.0.0.4:{port}"
        self.assertIsNotNone(self.wait_log_at(m, added, 10 * SLOW), m.diagnostics())
        n = m.log_size()
        self.assertEqual({request(m.port, "GET", f"/s{i}").body.decode() for i in range(12)},
                         {"x", "z"}, m.diagnostics())
        time.sleep(1.0)                  # five check intervals: a reset y would go down again
        log = m.error_log()
        self.assertEqual(log.count(f"(127.0.0.3:{port}) is down"), 1, m.diagnostics())
        self.assertNotIn(f"127.0.0.3:{port}", log[n:], "a request tried the down backend")

    def test_an_unresolvable_name_at_start_is_a_config_error(self):
        tmp = tempfile.mkdtemp(prefix="moxy-dns-")
        self.addCleanup(shutil.rmtree, tmp, True)
        self.hosts = os.path.join(tmp, "hosts")
        self.write_hosts()
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [f"app.test:{free_port()}"]}})
        m = NamespacedMoxy(conf, self.hosts)
        self.addCleanup(m.cleanup)
        with self.assertRaises(MoxyError) as e:
            m.start()
        self.assertIn('cannot resolve "app.test"', str(e.exception))


BACKENDS_LUA = """
local moxy = require "moxy"
local origin = moxy.upstream("origin")
local app = {}

function app.request_filter(s, ctx)
    if s.req:path() == "/backends" then
        local out = {}
        for _, b in ipairs(origin:backends()) do
            out[#out + 1] = { addr = b.addr, healthy = b.healthy }
        end
        return s:respond(200, out)
    end
end

function app.upstream_peer(s, ctx)
    return origin:select()
end

return app
"""


class LuaVisibility(HealthCheckBase):
    def test_backends_shows_the_checkers_verdict(self):
        a, b = self.start_named("a"), self.start_named("b")
        tmp = tempfile.mkdtemp(prefix="moxy-hc-lua-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "backends.lua")
        with open(path, "w") as f:
            f.write(BACKENDS_LUA)
        conf = config([{"name": "web", "listeners": [f"127.0.0.1:{free_port()}"], "script": path}],
                      {"origin": {"backends": [a.addr, b.addr], "health_check":
                                  {"type": "http", "path": "/health", "interval": 0.2, "fall": 1,
                                   "rise": 1}}},
                      threads=3)
        m = self.start_moxy(conf)

        def verdicts():
            # Fresh connections land on different workers: all must agree.
            seen = set()
            for _ in range(9):
                r = request(m.port, "GET", "/backends")
                self.assert_status(r, 200, m)
                seen.add(tuple((x["addr"], x["healthy"]) for x in json.loads(r.body)))
            self.assertEqual(len(seen), 1, f"workers disagree: {seen}")
            return dict(seen.pop())

        self.assertEqual(verdicts(), {a.addr: True, b.addr: True})
        b.stop()
        self.assertIsNotNone(self.wait_log_at(m, f"backend {b.addr} is down", 10 * SLOW), m.diagnostics())
        self.assertEqual(verdicts(), {a.addr: True, b.addr: False})
        b.start()
        self.assertIsNotNone(self.wait_log_at(m, f"backend {b.addr} is up", 10 * SLOW), m.diagnostics())
        self.assertEqual(verdicts(), {a.addr: True, b.addr: True})


@unittest.skipUnless(_unshare_works(), "needs unshare -rm (user and mount namespaces)")
class DnsStop(HealthCheckBase):
    def test_fast_stop_does_not_wait_for_a_resolver_that_never_answers(self):
        import socket
        # A name server that takes queries and never answers, on a loopback
        # address of its own (port 53 needs root: skip without it).
        ns_ip = f"127.83.{os.getpid() % 250}.{1 + threading.get_ident() % 250}"
        ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            ns.bind((ns_ip, 53))
        except OSError as e:
            ns.close()
            self.skipTest(f"cannot bind {ns_ip}:53 ({e})")
        self.addCleanup(ns.close)
        a = self.start_named("a")
        tmp = tempfile.mkdtemp(prefix="moxy-dns-")
        self.addCleanup(shutil.rmtree, tmp, True)
        self.hosts = os.path.join(tmp, "hosts")
        resolv = os.path.join(tmp, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(f"nameserver {ns_ip}\noptions timeout:30 attempts:1\n")
        with open(self.hosts, "w") as f:
            f.write(f"127.0.0.1 localhost\n127.0.0.1 slow.test\n")
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [f"slow.test:{a.port}"], "resolve_interval": 0.2}})
        m = NamespacedMoxy(conf, self.hosts, resolv)
        self.addCleanup(m.cleanup)
        self._test_moxies.append(m)
        m.start()
        self.assertEqual(request(m.port, "GET", "/").body, b"a")
        with open(self.hosts, "w") as f:      # the name now goes to the silent server
            f.write("127.0.0.1 localhost\n")
        ns.settimeout(5 * SLOW)
        ns.recvfrom(512)                      # a lookup is in flight
        t0 = time.monotonic()
        m.signal(2)                           # SIGINT: fast stop
        self.assertEqual(m.wait_exit(10 * SLOW), 0, m.diagnostics())
        took = time.monotonic() - t0
        self.assertLess(took, 3 * SLOW, m.diagnostics())
        print(f"    fast stop with a DNS lookup hanging: {took:.2f}s")


class LuaBalancerHealthCheck(HealthCheckBase):
    """moxy.balancer.new{ health_check = {...} } made at load time in each of 2 workers'
    VMs: one shared group, one set of checks (one log line per transition, not one per
    worker), and traffic leaves a stopped origin after its first failed check."""

    SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua", "balancer.lua")

    def test_lua_balancer_health_check_shared_by_workers(self):
        a, b = self.start_named("a"), self.start_named("b")
        check = {"type": "http", "path": "/health", "interval": 0.3, "rise": 2, "fall": 1}
        cfg = {"backends": [a.addr, b.addr], "health_check": check}
        conf = config([service("web", free_port(), script=self.SCRIPT, config=cfg)],
                      {"origin": {"backends": [a.addr], "connect_timeout": 1, "read_timeout": 5}},
                      threads=2)
        m = self.start_moxy(conf)
        started = "upstream (balancer): http health checks every 0.3s (rise 2, fall 1)"
        self.assertTrue(wait_for(lambda: started in m.error_log(), 5 * SLOW), m.diagnostics())
        self.assertTrue(wait_for(lambda: a.checks >= 2 and b.checks >= 2, 5 * SLOW),
                        f"no checks: {a.checks} {b.checks}\n{m.diagnostics()}")
        traffic = Traffic(m.port)
        self.addCleanup(traffic.stop)
        self.assertTrue(wait_for(lambda: min(a.hits, b.hits) >= 3, 10 * SLOW),
                        f"not every origin got traffic: {a.hits} {b.hits}\n{m.diagnostics()}")

        b.stop()
        down = f"upstream (balancer) backend {b.addr} is down (http check: connection refused, 1 fail)"
        t_down = self.wait_log_at(m, down, 10 * SLOW)
        self.assertIsNotNone(t_down, f"no '{down}' in the error log\n{m.diagnostics()}")
        hits_a = a.hits
        time.sleep(1.5 * SLOW)
        self.assertGreater(a.hits - hits_a, 20, "a got the traffic while b was down")
        n_restart = m.log_size()
        hits_down = b.hits
        b.start()
        up = f"upstream (balancer) backend {b.addr} is up (2 checks passed)"
        self.assertIsNotNone(self.wait_log_at(m, up, 10 * SLOW), m.diagnostics())
        self.assertTrue(wait_for(lambda: b.hits > hits_down + 3, 5 * SLOW),
                        f"the restarted origin gets no traffic\n{m.diagnostics()}")
        traffic.stop()

        after = traffic.since(t_down)
        self.assertGreater(len(after), 50, "too little traffic to say anything")
        self.assertEqual(bad(after), [], f"a client saw an error after the down check\n{m.diagnostics()}")
        log = m.error_log()
        tried = [l for l in log[log.find(down):n_restart].splitlines() if f'upstream: "{b.addr}"' in l]
        self.assertEqual(tried, [], "requests still tried the down backend")
        # Shared: the two workers' balancers are one group with one checker.
        self.assertEqual(log.count(started), 1, "checks started more than once")
        self.assertEqual(log.count(down), 1, "down logged more than once")
        self.assertEqual(log.count(up), 1, "up logged more than once")
        self.assertNotIn(f"backend {a.addr} is down", log)

    def test_lua_balancer_bad_health_check_names_the_key(self):
        a = self.start_named("a")
        cfg = {"backends": [a.addr], "health_check": {"type": "http", "rise": 0}}
        conf = config([service("web", free_port(), script=self.SCRIPT, config=cfg)],
                      {"origin": {"backends": [a.addr]}}, threads=1)
        m = Moxy(conf, start=False)
        self.addCleanup(m.cleanup)
        with self.assertRaises(MoxyError):
            m.start(timeout=5 * SLOW)
        text = m.stderr() + m.error_log()
        self.assertIn("health_check.rise", text)
        self.assertIn("out of range (1..100)", text)

    def test_lua_balancer_dropped_while_its_check_is_in_flight(self):
        """Balancers made per request and collected at once: each is registered with the
        health thread and unregistered while its check hangs on an origin that never
        answers (the check is cancelled; ASan watches the frees), and on a graceful stop."""
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)                 # never accepts: a check connects, then waits
        self.addCleanup(hole.close)
        port = hole.getsockname()[1]
        d = tempfile.mkdtemp(prefix="moxy-balhc-")
        self.addCleanup(shutil.rmtree, d, True)
        script = os.path.join(d, "churn.lua")
        with open(script, "w") as f:
            f.write("""local moxy = require "moxy"
local keep = moxy.balancer.new { backends = { "127.0.0.1:%d" },
                                 health_check = { type = "http", interval = 0.05, timeout = 5 } }
local app = {}
local held = {}
function app.request_filter(s)
    local n, k = tonumber(s.req:arg("n") or "0"), tonumber(s.req:arg("k") or "0")
    held = {}                   -- the last request's balancers go, their checks hanging
    collectgarbage()
    for i = 1, n do
        held[i] = moxy.balancer.new { backends = { "127.0.0.1:%d" },
                                      health_check = { type = "http", timeout = 5,
                                                       interval = 0.01 + (k * n + i) / 10000 } }
    end
    return s:respond(200, tostring(#keep:backends()))
end
return app
""" % (port, port))
        conf = config([service("web", free_port(), script=script)],
                      {"origin": {"backends": [f"127.0.0.1:{port}"]}}, threads=2)
        m = self.start_moxy(conf)
        for k in range(20):
            r = request(m.port, "GET", f"/?n=5&k={k}", timeout=5 * SLOW)
            self.assertEqual(r.status, 200, m.diagnostics())
            time.sleep(0.03)
        self.assertTrue(wait_for(lambda: m.error_log().count("health checks every") >= 101, 5 * SLOW),
                        m.diagnostics())
        t0 = time.monotonic()
        m.stop()
        self.assertLess(time.monotonic() - t0, 5 * SLOW, "the stop waited for the hung checks")
        self.assertEqual(m.sanitizer_lines(), [], m.diagnostics())

    def test_lua_balancer_health_check_across_reloads(self):
        """SIGHUP makes new VMs (and restarts the health thread): the balancer's group is
        released by the old VMs and held by the new ones; checks go on, verdicts stay
        one per transition, and nothing leaks (ASan)."""
        a, b = self.start_named("a"), self.start_named("b")
        check = {"type": "http", "path": "/health", "interval": 0.1, "rise": 2, "fall": 1}
        cfg = {"backends": [a.addr, b.addr], "health_check": check}
        conf = config([service("web", free_port(), script=self.SCRIPT, config=cfg)],
                      {"origin": {"backends": [a.addr], "connect_timeout": 1, "read_timeout": 5}},
                      threads=2)
        m = self.start_moxy(conf)
        b.stop()
        down = f"upstream (balancer) backend {b.addr} is down"
        self.assertIsNotNone(self.wait_log_at(m, down, 10 * SLOW), m.diagnostics())
        for gen in (2, 3):
            since = m.log_size()
            m.signal(signal.SIGHUP)
            self.assertTrue(m.wait_log(f"generation {gen} serving on all", since, 10 * SLOW),
                            m.diagnostics())
            for i in range(10):
                r = request(m.port, "GET", f"/r?g={gen}&i={i}", timeout=5 * SLOW)
                self.assertEqual((r.status, r.body), (200, b"a"), m.diagnostics())
        hits = b.hits
        b.start()
        up = f"upstream (balancer) backend {b.addr} is up"
        self.assertIsNotNone(self.wait_log_at(m, up, 10 * SLOW), m.diagnostics())
        self.assertTrue(wait_for(lambda: (request(m.port, "GET", "/x").body == b"b"
                                          or b.hits > hits), 5 * SLOW), m.diagnostics())
        log = m.error_log()
        self.assertEqual(log.count(down), 1, "down logged more than once")
        self.assertEqual(log.count(up), 1, "up logged more than once")
        m.stop()
        self.assertEqual(m.sanitizer_lines(), [], m.diagnostics())
