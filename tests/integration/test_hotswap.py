"""Hot swap under load: SIGHUP reloads scripts in place, SIGQUIT + `moxy -u`
hands the listening sockets to a new process. Load comes from wrk (100
keepalive connections, tests/integration/lua/wrk_count.lua counts non-2xx
answers; wrk counts refused connections and socket errors itself)."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from harness import (SLOW, Client, Moxy, MoxyTestCase, config, free_port, request, upstream,
                     wait_for)

LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua")
CONNS = 100


def script_text(name):
    with open(os.path.join(LUA, "hotswap.lua")) as f:
        return f.read().replace('"NAME"', json.dumps(name))


class Load:
    """wrk against <port> for <seconds>, in the background; .result() waits."""

    def __init__(self, port, seconds, path="/echo"):
        if shutil.which("wrk") is None:
            raise unittest_skip("wrk is not installed (scripts/deps.sh installs it)")
        self.proc = subprocess.Popen(
            ["wrk", "-t2", f"-c{CONNS}", f"-d{seconds}s", "--timeout", f"{int(10 * SLOW)}s",
             "-s", os.path.join(LUA, "wrk_count.lua"), f"http://127.0.0.1:{port}{path}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.seconds = seconds

    def result(self):
        out, _ = self.proc.communicate(timeout=self.seconds + 30 * SLOW)
        m = re.search(r"^WRK (\{.*\})$", out, re.M)
        if m is None:
            raise AssertionError(f"wrk gave no result:\n{out}")
        r = json.loads(m.group(1))
        r["text"] = out
        return r

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def unittest_skip(msg):
    import unittest
    return unittest.SkipTest(msg)


class Base(MoxyTestCase):
    def setUp(self):
        super().setUp()
        self.origin = self.start_origin()
        self.dir = tempfile.mkdtemp(prefix="moxy-hotswap-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.script = os.path.join(self.dir, "app.lua")
        self.write_script("a")

    def write_script(self, name, text=None):
        tmp = self.script + ".tmp"
        with open(tmp, "w") as f:
            f.write(text if text is not None else script_text(name))
        os.replace(tmp, self.script)

    def conf(self, port=None, script=None, more_listeners=(), svc_extra=None, origin_port=None,
             **top):
        svc = {"name": "web", "listeners": [f"127.0.0.1:{port or free_port()}", *more_listeners],
               "script": script or self.script, "upstream": "origin", **(svc_extra or {})}
        top.setdefault("threads", 2)
        top.setdefault("log_level", "info")
        return config([svc], {"origin": upstream(origin_port or self.origin.port)}, **top)

    def load(self, port, seconds, path="/echo"):
        ld = Load(port, seconds, path)
        self.addCleanup(ld.stop)
        return ld

    def assert_no_failures(self, r, m):
        self.assertGreater(r["requests"], 100, r["text"])
        msg = f"{r['text']}\n{m.diagnostics()}"
        self.assertEqual(r["non2xx"], 0, msg)
        for k in ("connect", "read", "write", "timeout"):
            self.assertEqual(r[k], 0, f"{k} errors\n{msg}")

    def script_of(self, port):
        return request(port, "GET", "/echo").header("x-script")

    def reload(self, m, gen):
        """SIGHUP; returns how long until a new connection got the new script."""
        since = m.log_size()
        t0 = time.monotonic()
        m.signal(signal.SIGHUP)
        self.assertTrue(m.wait_log(f"generation {gen} serving on all", since, 10 * SLOW),
                        m.diagnostics())
        return t0, since


class Reload(Base):
    # (a)
    def test_five_reloads_under_load_drop_nothing(self):
        m = self.start_moxy(self.conf())
        self.assertEqual(self.script_of(m.port), "a")
        ld = self.load(m.port, 10)
        time.sleep(1.0)
        names = ["b", "a", "b", "a", "b"]
        for i, name in enumerate(names):
            self.write_script(name)
            t0 = time.monotonic()
            m.signal(signal.SIGHUP)
            seen = wait_for(lambda: self.script_of(m.port) == name, 5 * SLOW, step=0.02)
            took = time.monotonic() - t0
            self.assertTrue(seen, f"reload {i + 1}: script {name} never answered\n{m.diagnostics()}")
            self.assertLess(took, 1.0 * SLOW, f"reload {i + 1} took {took:.2f}s to show")
            self.assertTrue(m.wait_log(f"generation {i + 2} serving on all", 0, 5 * SLOW))
            time.sleep(1.2)
        r = ld.result()
        self.assert_no_failures(r, m)
        log = m.error_log()
        # Every old generation retired: timers premature, shutdown() ran.
        for gen in range(1, 6):
            self.assertIn(f"generation {gen} retired", log)
        self.assertIn("timer premature in script", log)
        self.assertIn("shutdown of script", log)

    # (b)
    def test_broken_script_is_rejected_under_load(self):
        m = self.start_moxy(self.conf())
        ld = self.load(m.port, 5)
        time.sleep(1.0)
        since = m.log_size()
        self.write_script("b", "local app = {}\nfunction app.request_filter(s)\n  retrun 1\nend\n"
                               "return app\n")
        m.signal(signal.SIGHUP)
        self.assertTrue(m.wait_log("reload rejected", since, 5 * SLOW), m.diagnostics())
        line = next(l for l in m.error_log()[since:].splitlines() if "reload rejected" in l)
        self.assertIn("[error]", line)
        self.assertRegex(line, r"still serving generation 1: .*app\.lua:3: ")
        for _ in range(10):
            self.assertEqual(self.script_of(m.port), "a")
        # A script whose init() fails is rejected the same way.
        since = m.log_size()
        self.write_script("b", "return { init = function() error('no database') end }\n")
        m.signal(signal.SIGHUP)
        self.assertTrue(m.wait_log("reload rejected", since, 5 * SLOW), m.diagnostics())
        self.assertRegex(m.error_log()[since:], r"app\.lua:1: no database")
        r = ld.result()
        self.assert_no_failures(r, m)
        self.assertEqual(self.script_of(m.port), "a")
        self.assertNotIn("generation 2", m.error_log())

    def test_bad_config_reload_keeps_the_old_config(self):
        m = self.start_moxy(self.conf())
        with open(m.config_path) as f:
            good = f.read()
        with open(m.config_path, "w") as f:
            f.write(good.replace("threads: 2", "threads: lots"))
        since = m.log_size()
        m.signal(signal.SIGHUP)
        self.assertTrue(m.wait_log("reload rejected", since, 5 * SLOW), m.diagnostics())
        self.assertRegex(m.error_log()[since:], r"moxy\.yaml:\d+:\d+: threads")
        self.assertEqual(self.script_of(m.port), "a")
        # Fixed, the next SIGHUP applies it (and a new script with it).
        with open(m.config_path, "w") as f:
            f.write(good)
        self.write_script("b")
        self.reload(m, 2)
        self.assertEqual(self.script_of(m.port), "b")

    def test_reload_changes_timeouts_limits_and_reports_listener_changes(self):
        m = self.start_moxy(self.conf())
        big = "/echo?" + "x" * 3000
        self.assertEqual(request(m.port, "GET", big).status, 200)
        extra = free_port()
        text = self.conf(port=m.port, more_listeners=[f"127.0.0.1:{extra}"],
                         svc_extra={"limits": {"max_request_line": 1024}})
        with open(m.config_path, "w") as f:
            f.write(f"error_log: {json.dumps(m.error_log_path)}\n" + text)
        t0, since = self.reload(m, 2)
        self.assertEqual(request(m.port, "GET", big).status, 414)
        self.assertIn(f"listener 127.0.0.1:{extra} (service \"web\") is new: not opened",
                      m.error_log()[since:])

    def test_reload_builds_the_new_upstream_groups(self):
        m = self.start_moxy(self.conf())
        other = self.start_origin()
        for _ in range(4):
            self.assertEqual(request(m.port, "GET", "/echo").status, 200)
        self.assertEqual(other.request_count, 0)
        with open(m.config_path, "w") as f:
            f.write(f"error_log: {json.dumps(m.error_log_path)}\n" + self.conf(
                port=m.port, origin_port=other.port))
        before = self.origin.request_count
        self.reload(m, 2)
        for _ in range(4):
            self.assertEqual(request(m.port, "GET", "/echo").status, 200)
        self.assertEqual(other.request_count, 4)
        self.assertEqual(self.origin.request_count, before)

    def test_handover_carries_state_to_the_next_generation(self):
        m = self.start_moxy(self.conf(threads=1))
        with Client(m.port) as c:
            for _ in range(5):
                r = c.request("GET", "/echo")
                self.assertEqual(r.header("x-carried"), "0")
            self.write_script("b")
            self.reload(m, 2)
            # The idle keepalive connection moved with the reload: nothing holds
            # generation 1 any more, so it retires at once, once its premature
            # timer function finished waiting.
            self.assertTrue(m.wait_log("generation 1 retired", 0, 5 * SLOW), m.diagnostics())
            log = m.error_log()
            self.assertLess(log.index("flushed after premature in script a"),
                            log.index("generation 1 retired"))
            r = c.request("GET", "/echo")
            self.assertEqual(r.header("x-script"), "b")
            self.assertEqual(r.header("x-carried"), "5")

    def test_a_worker_that_cannot_build_the_generation_keeps_the_old_one(self):
        m = self.start_moxy(self.conf())
        # init() passes in the check VM (worker id 0) and in worker 1, fails in worker 2.
        self.write_script("b", script_text("b").replace(
            "function app.init(config, previous)",
            "function app.init(config, previous)\n"
            "    if moxy.worker.id() == 1 then error(\"no room in worker 2\") end"))
        since = m.log_size()
        m.signal(signal.SIGHUP)
        self.assertTrue(m.wait_log("generation 2 serving on 1 of 2 workers", since, 10 * SLOW),
                        m.diagnostics())
        log = m.error_log()[since:]
        self.assertRegex(log, r"reload: worker 2 keeps generation 1: .*app\.lua:\d+: no room")
        seen = set()
        for _ in range(40):
            seen.add(self.script_of(m.port))
        self.assertLessEqual(seen, {"a", "b"})   # which worker accepts is the kernel's choice
        # The next good reload brings both workers to one generation.
        self.write_script("a")
        self.reload(m, 3)
        self.assertEqual({self.script_of(m.port) for _ in range(20)}, {"a"})

    # (d), reload half
    def test_long_requests_finish_on_their_generation_across_a_reload(self):
        # One worker: with two, the idle one rightly retires its generation 1 at once.
        m = self.start_moxy(self.conf(threads=1))
        results = {}

        def long(name, path):
            try:
                results[name] = request(m.port, "GET", path, timeout=15 * SLOW)
            except Exception as e:  # reported below
                results[name] = e

        ts = [threading.Thread(target=long, args=("slow", "/slow?ms=3000")),
              threading.Thread(target=long, args=("sleep", "/sleep"))]
        for t in ts:
            t.start()
        wait_for(lambda: any(r["path"] == "/slow" for r in self.origin.requests), 5 * SLOW)
        self.write_script("b")
        self.reload(m, 2)
        self.assertEqual(self.script_of(m.port), "b")
        self.assertNotIn("generation 1 retired", m.error_log(), "retired under a live request")
        for t in ts:
            t.join(20 * SLOW)
        slow, sleep = results["slow"], results["sleep"]
        self.assertNotIsInstance(slow, Exception, m.diagnostics())
        self.assertNotIsInstance(sleep, Exception, m.diagnostics())
        self.assertEqual((slow.status, slow.body), (200, b"slow"))
        self.assertEqual(slow.header("x-script"), "a")     # ran on its own generation
        self.assertEqual(sleep.status, 200)
        self.assertEqual(sleep.header("x-script"), "a")
        self.assertEqual(sleep.json()["target"], "/sleep")
        self.assertTrue(m.wait_log("generation 1 retired", 0, 5 * SLOW), m.diagnostics())


class Upgrade(Base):
    def upgrade_conf(self, port, script):
        return self.conf(port=port, script=script, pid_file=os.path.join(self.dir, "moxy.pid"),
                         upgrade_sock=os.path.join(self.dir, "upgrade.sock"),
                         grace_period_seconds=0.5, graceful_shutdown_timeout_seconds=10)

    def start_new(self, port, name):
        path = os.path.join(self.dir, f"new-{name}.lua")
        with open(path, "w") as f:
            f.write(script_text(name))
        new = self.start_moxy(self.upgrade_conf(port, path), start=False, args=["-u"])
        new.start()
        self.assertTrue(new.wait_log("waiting up to", 0, 10 * SLOW), new.diagnostics())
        return new

    def pid_file(self):
        with open(os.path.join(self.dir, "moxy.pid")) as f:
            return int(f.read().strip())

    # (c)
    def test_graceful_upgrade_under_load_drops_nothing(self):
        port = free_port()
        old = self.start_moxy(self.upgrade_conf(port, self.script))
        self.assertEqual(self.pid_file(), old.pid)
        ld = self.load(port, 10)
        time.sleep(2.0)
        new = self.start_new(port, "b")
        old.signal(signal.SIGQUIT)
        self.assertTrue(wait_for(lambda: self.script_of(port) == "b", 10 * SLOW),
                        old.diagnostics() + "\n" + new.diagnostics())
        self.assertEqual(old.wait_exit(15 * SLOW), 0, old.diagnostics())
        self.assertIn("the new process serves; draining", old.error_log())
        self.assertEqual(self.pid_file(), new.pid)
        r = ld.result()
        self.assert_no_failures(r, new)
        self.assertTrue(new.alive())
        self.assertEqual(self.script_of(port), "b")

    def test_upgrades_chain(self):
        port = free_port()
        first = self.start_moxy(self.upgrade_conf(port, self.script))
        second = self.start_new(port, "b")
        first.signal(signal.SIGQUIT)
        self.assertEqual(first.wait_exit(15 * SLOW), 0, first.diagnostics())
        self.assertEqual(self.script_of(port), "b")
        third = self.start_new(port, "c")
        second.signal(signal.SIGQUIT)
        self.assertEqual(second.wait_exit(15 * SLOW), 0, second.diagnostics())
        self.assertEqual(self.script_of(port), "c")
        self.assertEqual(self.pid_file(), third.pid)

    def test_a_new_process_that_fails_leaves_the_old_one_serving(self):
        port = free_port()
        old = self.start_moxy(self.upgrade_conf(port, self.script))
        # Its script does not load: it refuses before it takes any socket.
        bad = os.path.join(self.dir, "bad.lua")
        with open(bad, "w") as f:
            f.write("return 42\n")
        new = self.start_moxy(self.upgrade_conf(port, bad), start=False, args=["-u"])
        try:
            new.start()
        except Exception:
            pass
        self.assertIsNotNone(new.wait_exit(10 * SLOW))
        self.assertNotEqual(new.returncode, 0)
        since = old.log_size()
        old.signal(signal.SIGQUIT)
        self.assertTrue(old.wait_log("graceful upgrade failed, still serving", since, 20 * SLOW),
                        old.diagnostics())
        self.assertTrue(old.alive())
        self.assertEqual(self.script_of(port), "a")
        self.assertEqual(self.pid_file(), old.pid)

    # (d), upgrade half
    def test_long_request_finishes_across_an_upgrade(self):
        port = free_port()
        old = self.start_moxy(self.upgrade_conf(port, self.script))
        results = {}

        def long():
            try:
                results["slow"] = request(port, "GET", "/slow?ms=3000", timeout=15 * SLOW)
            except Exception as e:  # reported below
                results["slow"] = e

        t = threading.Thread(target=long)
        t.start()
        wait_for(lambda: any(r["path"] == "/slow" for r in self.origin.requests), 5 * SLOW)
        new = self.start_new(port, "b")
        old.signal(signal.SIGQUIT)
        self.assertTrue(wait_for(lambda: self.script_of(port) == "b", 10 * SLOW),
                        new.diagnostics())
        t.join(20 * SLOW)
        slow = results["slow"]
        self.assertNotIsInstance(slow, Exception, old.diagnostics())
        self.assertEqual((slow.status, slow.body), (200, b"slow"))
        self.assertEqual(slow.header("x-script"), "a")
        self.assertEqual(old.wait_exit(15 * SLOW), 0, old.diagnostics())

