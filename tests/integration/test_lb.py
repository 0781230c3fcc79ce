"""Load balancing through the real binary: ketama picks the same backend as nginx's
`hash $arg_k consistent` for the same servers (nginx itself runs beside moxy), even past a
down one, and `weighted` gives nginx's round-robin sequence; weighted round robin is exact
per cycle across workers, hash_key keeps a user on one backend, least_conn avoids a
busy backend, passive health takes a failing backend out, failover retries another
backend, and fail_to_connect can change that decision."""
import os
import shutil
import signal
import subprocess
import socket
import tempfile
import threading
import time
import unittest

from harness import (SLOW, Client, MoxyTestCase, Origin, config, free_port, parse_head,
                     port_open, request, response_bytes, service, wait_for)


class FailingOrigin(Origin):
    """Answers every request with 500 (for passive health on_5xx)."""

    def _handle(self, conn, reader, head):
        start, _ = parse_head(head)
        with self.lock:
            self.requests.append({"target": start[1]})
        conn.sendall(response_bytes(500, [("Content-Type", "text/plain")], b"broken"))
        return True


class Nginx:
    """nginx with one `hash $arg_k consistent` upstream over <n> servers of its own, each
    answering with its port; server <down> (an index) is marked `down` and nothing listens
    on its port. Stopped by PID."""

    def __init__(self, weights, down=None, balance="hash $arg_k consistent;"):
        self.dir = tempfile.mkdtemp(prefix="moxy-nginx-")
        os.chmod(self.dir, 0o755)
        self.ports = [free_port() for _ in weights]
        self.weights = weights
        self.port = free_port()
        d = self.dir
        servers = "\n".join(f"        server 127.0.0.1:{p} weight={w}{' down' if i == down else ''};"
                            for i, (p, w) in enumerate(zip(self.ports, weights)))
        backends = "\n".join(f"    server {{ listen 127.0.0.1:{p}; "
                             f"location / {{ return 200 \"$server_port\"; }} }}"
                             for i, p in enumerate(self.ports) if i != down)
        live_ports = [p for i, p in enumerate(self.ports) if i != down]
        conf = f"""worker_processes 1;
daemon off;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream ring {{
        {balance}
{servers}
    }}
    server {{ listen 127.0.0.1:{self.port}; location / {{ proxy_pass http://ring; }} }}
{backends}
}}
"""
        self.conf_path = os.path.join(d, "nginx.conf")
        with open(self.conf_path, "w") as f:
            f.write(conf)
        self.log = open(os.path.join(d, "stderr.log"), "wb")
        self.proc = subprocess.Popen(["nginx", "-p", d, "-e", f"{d}/error.log", "-c",
                                      self.conf_path], stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=self.log)
        if not wait_for(lambda: all(port_open(p, 0.2) for p in [self.port] + live_ports)
                        or self.proc.poll() is not None, 10 * SLOW):
            self.stop()
            raise RuntimeError("nginx did not start")
        if self.proc.poll() is not None:
            with open(os.path.join(d, "error.log")) as f:
                raise RuntimeError("nginx exited: " + f.read()[-2000:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)   # the master stops its worker
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@unittest.skipUnless(shutil.which("nginx"), "nginx not installed (bash scripts/deps.sh)")
class AgainstNginx(MoxyTestCase):
    def compare(self, weights, keys, down=None):
        ngx = Nginx(weights, down)
        self.addCleanup(ngx.stop)
        backends = [f"127.0.0.1:{p} weight={w}" for p, w in zip(ngx.ports, weights)]
        conf = config([service("web", free_port(), upstream_name="ring")],
                      {"ring": {"backends": backends, "algorithm": "ketama", "max_retries": 2,
                                "hash_key": "arg:k", "connect_timeout": 1, "read_timeout": 5}})
        m = self.start_moxy(conf)
        seen, differ = set(), []
        with Client(ngx.port) as cn, Client(m.port) as cm:
            for k in keys:
                a = cn.request("GET", f"/?k={k}")
                b = cm.request("GET", f"/?k={k}")
                self.assertEqual(a.status, 200)
                self.assert_status(b, 200, m)
                seen.add(a.body)
                if a.body != b.body:
                    differ.append((k, a.body, b.body))
        self.assertEqual(differ, [], f"{len(differ)} of {len(keys)} keys land elsewhere "
                                     f"than in nginx: {differ[:5]}")
        self.assertEqual(len(seen), len(weights) - (down is not None), "every backend got keys")

    def test_same_backend_as_nginx_for_1000_keys(self):
        keys = [f"user-{i}" for i in range(500)] + \
               [f"{i * 2654435761 % 2**32:08x}/obj%20{i}" for i in range(500)]
        self.compare([1, 1, 1, 1, 1], keys)

    def test_same_backend_as_nginx_with_weights(self):
        self.compare([1, 3, 2, 5], [f"k{i}" for i in range(1000)])

    def test_weighted_gives_nginx_round_robin_sequence(self):
        weights = [5, 1, 3, 2]
        ngx = Nginx(weights, balance="")
        self.addCleanup(ngx.stop)
        backends = [f"127.0.0.1:{p} weight={w}" for p, w in zip(ngx.ports, weights)]
        conf = config([service("web", free_port(), upstream_name="ring")],
                      {"ring": {"backends": backends, "algorithm": "weighted", "read_timeout": 5}})
        m = self.start_moxy(conf)
        with Client(ngx.port) as cn, Client(m.port) as cm:
            a = [cn.request("GET", f"/{i}").body for i in range(33)]
            b = [cm.request("GET", f"/{i}").body for i in range(33)]
        self.assertEqual(a, b, "moxy's weighted sequence is nginx's round robin's")

    def test_same_walk_as_nginx_past_a_down_backend(self):
        # nginx skips the `down` server's points; moxy fails to connect to it once (the
        # failover walks the ring, passive health then takes it out): the same next backend.
        self.compare([1, 2, 1, 1], [f"key-{i}" for i in range(600)], down=1)


class Algorithms(MoxyTestCase):
    def origins(self, n):
        return [self.start_origin() for _ in range(n)]

    def test_weighted_ratios_exact_per_cycle(self):
        o = self.origins(3)
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [f"{o[0].addr} weight=1", f"{o[1].addr} weight=2",
                                               f"{o[2].addr} weight=3"],
                                  "algorithm": "weighted", "read_timeout": 5}}, threads=2)
        m = self.start_moxy(conf)
        for cycle in range(5):
            with Client(m.port) as c:
                for i in range(6):
                    self.assert_status(c.request("GET", f"/echo?c={cycle}&i={i}"), 200, m)
            self.assertEqual([x.request_count for x in o],
                             [1 * (cycle + 1), 2 * (cycle + 1), 3 * (cycle + 1)])

    def test_hash_key_header_keeps_a_user_on_one_backend(self):
        o = self.origins(4)
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [x.addr for x in o], "algorithm": "fnv",
                                  "hash_key": "header:x-user", "read_timeout": 5}})
        m = self.start_moxy(conf)
        homes = {}
        for user in range(12):
            before = [x.request_count for x in o]
            for i in range(5):
                self.assert_status(request(m.port, "GET", f"/echo?i={i}",
                                           headers=[("X-User", f"u{user}")]), 200, m)
            got = [x.request_count - b for x, b in zip(o, before)]
            self.assertEqual(sorted(got), [0, 0, 0, 5], f"user u{user} moved: {got}")
            homes[user] = got.index(5)
        self.assertGreater(len(set(homes.values())), 1, "users spread over backends")

    def test_hash_key_cookie_with_ketama(self):
        o = self.origins(3)
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [x.addr for x in o], "algorithm": "ketama",
                                  "hash_key": "cookie:sid", "read_timeout": 5}})
        m = self.start_moxy(conf)
        for sid in ("abc", "def", "x1"):
            before = [x.request_count for x in o]
            for i in range(4):
                self.assert_status(request(m.port, "GET", "/echo", headers=[
                    ("Cookie", f"theme=dark; sid={sid}; lang=en")]), 200, m)
            got = [x.request_count - b for x, b in zip(o, before)]
            self.assertEqual(sorted(got), [0, 0, 4], f"sid {sid}: {got}")

    def test_least_conn_avoids_the_busy_backend(self):
        o = self.origins(2)
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [x.addr for x in o], "algorithm": "least_conn",
                                  "read_timeout": 60}}, threads=2,
                      graceful_shutdown_timeout_seconds=0.5)
        m = self.start_moxy(conf)
        # The slow request outlasts the test: the stop at the end cuts it.
        slow = Client(m.port, timeout=10 * SLOW)
        self.addCleanup(slow.close)
        slow.send(b"GET /slow?ms=30000 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(wait_for(lambda: sum(x.request_count for x in o) == 1, 3 * SLOW))
        busy = 0 if o[0].request_count == 1 else 1
        for i in range(8):
            self.assert_status(request(m.port, "GET", f"/echo?i={i}"), 200, m)
        self.assertEqual(o[busy].request_count, 1, "the busy backend got none of the 8: "
                         + str([x.targets() for x in o]))


class PassiveHealthAndFailover(MoxyTestCase):
    def test_failover_to_another_backend_and_passive_down(self):
        live = [self.start_origin(), self.start_origin()]
        dead = free_port()
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [f"127.0.0.1:{dead}"] + [x.addr for x in live],
                                  "max_retries": 1, "connect_timeout": 1, "read_timeout": 5,
                                  "passive_health": {"max_fails": 1, "fail_timeout": 30}}})
        m = self.start_moxy(conf)
        for i in range(30):
            self.assert_status(request(m.port, "GET", f"/echo?i={i}"), 200, m)
        self.assertEqual(sum(x.request_count for x in live), 30)
        log = m.error_log()
        self.assertEqual(log.count("while connecting to upstream"), 1,
                         "the dead backend was tried once, then cooled off\n" + log[-2000:])
        self.assertIn(f"upstream origin backend 127.0.0.1:{dead} is down for 30s", log)
        self.assertIn("retrying on upstream origin backend", log)

    def test_failover_never_retries_the_same_backend(self):
        live = self.start_origin()
        dead = [free_port(), free_port()]
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [f"127.0.0.1:{p}" for p in dead] + [live.addr],
                                  "algorithm": "ketama", "hash_key": "arg:k",
                                  "max_retries": 2, "connect_timeout": 1, "read_timeout": 5,
                                  "passive_health": {"max_fails": 0}}})
        m = self.start_moxy(conf)
        for k in range(20):
            self.assert_status(request(m.port, "GET", f"/echo?k={k}"), 200, m)
        self.assertEqual(live.request_count, 20)

    def test_max_retries_zero_gives_502(self):
        live = self.start_origin()
        dead = free_port()
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [f"127.0.0.1:{dead}", live.addr],
                                  "max_retries": 0, "connect_timeout": 1, "read_timeout": 5,
                                  "passive_health": {"max_fails": 0}}})
        m = self.start_moxy(conf)
        codes = [request(m.port, "GET", f"/echo?i={i}").status for i in range(6)]
        self.assertEqual(sorted(codes), [200, 200, 200, 502, 502, 502])

    def test_fail_to_connect_can_refuse_the_failover(self):
        live = self.start_origin()
        dead = free_port()
        d = tempfile.mkdtemp(prefix="moxy-lb-")
        self.addCleanup(shutil.rmtree, d, True)
        script = os.path.join(d, "nofailover.lua")
        with open(script, "w") as f:
            f.write("""local app = {}
function app.fail_to_connect(s, peer, err, ctx)
    if s.req:arg("failover") == "no" then
        return false
    elseif s.req:arg("failover") == "boom" then
        error("boom")
    end
end
return app
""")
        conf = config([service("web", free_port(), script=script)],
                      {"origin": {"backends": [f"127.0.0.1:{dead}", live.addr],
                                  "max_retries": 1, "connect_timeout": 1, "read_timeout": 5,
                                  "passive_health": {"max_fails": 0}}})
        m = self.start_moxy(conf)
        yes = [request(m.port, "GET", f"/echo?i={i}").status for i in range(4)]
        no = [request(m.port, "GET", f"/echo?i={i}&failover=no").status for i in range(4)]
        self.assertEqual(yes, [200] * 4, "nil keeps the default failover")
        self.assertEqual(sorted(no), [200, 200, 502, 502], "false refuses it")
        boom = [request(m.port, "GET", f"/echo?i={i}&failover=boom").status for i in range(4)]
        self.assertEqual(boom, [200] * 4, "a failing handler leaves the default")
        self.assertIn("boom", m.error_log())

    def test_on_5xx_marks_a_backend_down(self):
        good = self.start_origin()
        bad = FailingOrigin()
        self.addCleanup(bad.stop)
        bad.start()
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [bad.addr, good.addr], "read_timeout": 5,
                                  "passive_health": {"max_fails": 2, "fail_timeout": 30,
                                                     "on_5xx": True}}})
        m = self.start_moxy(conf)
        codes = [request(m.port, "GET", f"/echo?i={i}").status for i in range(20)]
        self.assertEqual(codes.count(500), 2, f"two 500s, then the backend is out: {codes}")
        self.assertEqual(bad.request_count, 2)
        self.assertIn(f"upstream origin backend {bad.addr} is down for 30s (2 consecutive "
                      "failures)", m.error_log())

    def test_5xx_is_not_a_failure_by_default(self):
        good = self.start_origin()
        bad = FailingOrigin()
        self.addCleanup(bad.stop)
        bad.start()
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [bad.addr, good.addr], "read_timeout": 5}})
        m = self.start_moxy(conf)
        codes = [request(m.port, "GET", f"/echo?i={i}").status for i in range(10)]
        self.assertEqual(codes.count(500), 5)

    def test_all_backends_down_still_tries_one(self):
        dead = [free_port(), free_port()]
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [f"127.0.0.1:{p}" for p in dead],
                                  "connect_timeout": 1, "read_timeout": 5,
                                  "passive_health": {"max_fails": 1, "fail_timeout": 30}}})
        m = self.start_moxy(conf)
        for i in range(3):
            self.assertEqual(request(m.port, "GET", "/").status, 502)
        self.assertIn("has no usable backend, trying", m.error_log())


class LuaBalancer(MoxyTestCase):
    SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua", "balancer.lua")

    def start(self, backends, **kw):
        cfg = {"backends": backends, **kw}
        conf = config([service("web", free_port(), script=self.SCRIPT, config=cfg)],
                      {"origin": {"backends": backends, "algorithm": kw.get("algorithm", "round_robin"),
                                  "hash_key": kw.get("hash_key", "uri"), "max_retries": 1,
                                  "connect_timeout": 1, "read_timeout": 5}})
        return self.start_moxy(conf)

    def test_lua_balancer_max_retries_and_passive_health_options(self):
        live = self.start_origin()
        dead = free_port()
        m = self.start([f"127.0.0.1:{dead}", live.addr], max_retries=0,
                       passive_health={"max_fails": 0})
        codes = [request(m.port, "GET", f"/echo?i={i}").status for i in range(6)]
        self.assertEqual(sorted(codes), [200, 200, 200, 502, 502, 502], "no failover, no cool-off")
        bad = FailingOrigin()
        self.addCleanup(bad.stop)
        bad.start()
        m = self.start([bad.addr, live.addr],
                       passive_health={"max_fails": 1, "fail_timeout": 30, "on_5xx": True})
        codes = [request(m.port, "GET", f"/echo?i={i}").status for i in range(10)]
        self.assertEqual(codes.count(500), 1, codes)
        self.assertIn(f"upstream (balancer) backend {bad.addr} is down for 30s", m.error_log())

    def test_ketama_selection_from_lua_goes_where_select_says(self):
        o = [self.start_origin() for _ in range(3)]
        by_addr = {x.addr: x for x in o}
        m = self.start([x.addr for x in o], algorithm="ketama", hash_key="arg:k")
        for k in range(15):
            which = request(m.port, "GET", f"/which?k={k}")
            self.assert_status(which, 200, m)
            target = by_addr[which.body.decode()]
            for path in ("/", "/group"):
                before = target.request_count
                self.assert_status(request(m.port, "GET", f"{path}?k={k}"), 200, m)
                self.assertEqual(target.request_count, before + 1, f"{path}?k={k}")

    def test_least_conn_inflight_counts_across_workers(self):
        o = [self.start_origin() for _ in range(2)]
        cfg = {"backends": [x.addr for x in o], "algorithm": "least_conn"}
        conf = config([service("web", free_port(), script=self.SCRIPT, config=cfg)],
                      {"origin": {**cfg, "read_timeout": 60}}, threads=2)
        m = self.start_moxy(conf)
        results = []

        def slow():
            # long enough for all 12 to be in flight at once, even on a loaded machine
            results.append(request(m.port, "GET", f"/slow?ms={int(4000 * SLOW)}&via=group",
                                   timeout=20 * SLOW).status)

        threads = [threading.Thread(target=slow) for _ in range(12)]
        for t in threads:
            t.start()
        self.assertTrue(wait_for(lambda: sum(x.request_count for x in o) == 12, 3 * SLOW),
                        "all 12 reached the origins")
        listing = request(m.port, "GET", "/group-backends").json()
        inflight = [b["inflight"] for b in listing]
        self.assertEqual(sum(inflight), 12, listing)
        self.assertLessEqual(abs(inflight[0] - inflight[1]), 2, f"least_conn split {inflight}")
        for t in threads:
            t.join(25 * SLOW)
        self.assertEqual(results, [200] * 12)
        listing = request(m.port, "GET", "/group-backends").json()
        self.assertEqual([b["inflight"] for b in listing], [0, 0], "every claim was released")

    def test_hash_key_uri_hashes_the_uri_the_script_left(self):
        o = [self.start_origin() for _ in range(3)]
        m = self.start([x.addr for x in o], algorithm="ketama", hash_key="uri")
        home = None
        for i in range(12):
            before = [x.request_count for x in o]
            self.assert_status(request(m.port, "GET", f"/page{i}?norm=1"), 200, m)
            got = [x.request_count - b for x, b in zip(o, before)].index(1)
            home = got if home is None else home
            self.assertEqual(got, home, "every uri became /normalized: one backend")
        self.assertEqual(o[home].targets()[-1], "/normalized")

    def test_lua_balancer_fails_over_and_reports_backends(self):
        live = self.start_origin()
        dead = free_port()
        m = self.start([f"127.0.0.1:{dead}", live.addr])
        for i in range(6):
            self.assert_status(request(m.port, "GET", f"/echo?i={i}"), 200, m)
        self.assertEqual(live.request_count, 6)
        listing = request(m.port, "GET", "/backends").json()
        self.assertEqual([b["addr"] for b in listing], [f"127.0.0.1:{dead}", live.addr])
        self.assertEqual([b["inflight"] for b in listing], [0, 0])
        self.assertEqual([b["usable"] for b in listing], [False, True], "dead one cools off")
        self.assertEqual([b["healthy"] for b in listing], [True, True], "no active check said so")


class PortOrigin(Origin):
    """An Origin on a given port (to restart one where it was)."""

    def __init__(self, port):
        super().__init__()
        self.want_port = port

    def start(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.want_port))
        self.port = self.want_port
        self.sock.listen(256)
        self.sock.settimeout(0.2)
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self


class OriginStopsAndReturns(MoxyTestCase):
    def test_no_5xx_while_one_of_three_is_down_and_it_returns(self):
        o = [self.start_origin() for _ in range(3)]
        conf = config([service("web", free_port())],
                      {"origin": {"backends": [x.addr for x in o], "max_retries": 2,
                                  "connect_timeout": 1, "read_timeout": 5,
                                  "passive_health": {"max_fails": 1, "fail_timeout": 1}}},
                      threads=2)
        m = self.start_moxy(conf)
        statuses = []

        def burst(n):
            for i in range(n):
                statuses.append(request(m.port, "GET", f"/echo?i={len(statuses)}").status)

        burst(30)
        port = o[1].port
        o[1].stop()
        burst(60)
        self.assertEqual(set(statuses), {200}, "no client saw an error while one was down")
        back = PortOrigin(port)
        self.addCleanup(back.stop)
        back.start()
        deadline = time.monotonic() + 10 * SLOW
        while back.request_count == 0 and time.monotonic() < deadline:
            burst(3)
            time.sleep(0.1)
        self.assertGreater(back.request_count, 0, "the restarted origin got traffic again")
        self.assertEqual(set(statuses), {200})
        self.assertIn(f"upstream origin backend 127.0.0.1:{port} is down for 1s", m.error_log())
