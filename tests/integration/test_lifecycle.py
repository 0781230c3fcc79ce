"""Process lifecycle: graceful SIGTERM, pid file, daemon mode, access log,
several worker threads."""
import os
import signal
import socket
import subprocess
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

from harness import (REPO, SLOW, Client, Moxy, MoxyTestCase, moxy_bin, moxy_env, pid_alive, port_open,
                     request, simple_config, wait_for)


class Lifecycle(MoxyTestCase):
    def setUp(self):
        super().setUp()
        self.origin = self.start_origin()

    def conf(self, **top):
        return simple_config(self.origin.port, upstream_opts={"read_timeout": 5}, **top)

    def test_sigterm_drains_in_flight_request(self):
        m = self.start_moxy(self.conf(grace_period_seconds=0, graceful_shutdown_timeout_seconds=5))
        out = {}

        def slow():
            try:
                out["resp"] = request(m.port, "GET", "/slow?ms=1500", timeout=8)
            except Exception as e:  # reported below
                out["error"] = e

        t = threading.Thread(target=slow, daemon=True)
        t.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        m.signal(signal.SIGTERM)
        t.join(8)
        rc = m.wait_exit(6 * SLOW)
        self.assertNotIn("error", out, f"in-flight request failed: {out.get('error')!r}\n{m.diagnostics()}")
        self.assert_status(out["resp"], 200, m)
        self.assertEqual(out["resp"].body, b"slow")
        self.assertEqual(rc, 0, f"moxy did not exit 0 within the grace time\n{m.diagnostics()}")
        self.assertLess(time.monotonic() - t0, 5 + 1)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", m.port), timeout=1).close()

    def test_pid_file_written_and_removed(self):
        m = self.start_moxy(self.conf(pid_file="{tmp}/moxy.pid"))
        pid_path = m.path("moxy.pid")
        self.assertTrue(wait_for(lambda: m.read(pid_path).strip(), 2 * SLOW), "pid file not written")
        self.assertEqual(m.read(pid_path).strip(), str(m.pid))
        self.assertEqual(m.stop(), 0, m.diagnostics())
        self.assertFalse(os.path.exists(pid_path), "pid file left behind after exit")

    def test_daemon_mode(self):
        m = Moxy(self.conf(pid_file="{tmp}/moxy.pid"), start=False)
        self.addCleanup(m.cleanup)
        pid_path = m.path("moxy.pid")
        pid = None

        def kill_daemon():     # only the pid moxy wrote, and only if it is moxy
            try:
                if pid and pid_alive(pid) and b"moxy" in open(f"/proc/{pid}/cmdline", "rb").read():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.addCleanup(kill_daemon)
        with open(m.path("daemon.out"), "wb") as out:
            p = subprocess.run([moxy_bin(), "-d", "-c", m.config_path], stdin=subprocess.DEVNULL, stdout=out,
                               stderr=out, timeout=10 * SLOW, cwd=REPO, env=moxy_env())
        self.assertEqual(p.returncode, 0, m.read("daemon.out"))
        self.assertTrue(wait_for(lambda: m.read(pid_path).strip().isdigit(), 3 * SLOW), "no pid file")
        pid = int(m.read(pid_path))
        self.assertTrue(pid_alive(pid))
        self.assertTrue(wait_for(lambda: port_open(m.port), 3 * SLOW), "daemon is not listening")
        self.assert_status(request(m.port, "GET", "/echo"), 200, m)
        os.kill(pid, signal.SIGTERM)
        self.assertTrue(wait_for(lambda: not pid_alive(pid), 10), "daemon did not exit after SIGTERM")
        self.assertFalse(os.path.exists(pid_path), "pid file left behind")
        self.assertEqual(m.sanitizer_lines(), [])

    def test_access_log(self):
        m = self.start_moxy(self.conf(access_log="{tmp}/access.log"))
        expected = [("GET", "/echo?al=1", 200), ("POST", "/echo", 200), ("GET", "/status?code=404", 404)]
        with Client(m.port) as c:
            for method, target, status in expected:
                self.assert_status(c.request(method, target, body=b"x" if method == "POST" else None), status, m)

        def lines():
            return [l for l in m.read("access.log").splitlines() if l.strip()]
        wait_for(lambda: len(lines()) >= len(expected), 3 * SLOW)
        got = lines()
        self.assertEqual(len(got), len(expected), got)
        for line, (method, target, status) in zip(got, expected):
            self.assertIn(method, line)
            self.assertIn(target.split("?")[0], line)
            self.assertRegex(line, rf"\b{status}\b")

    def test_two_threads_parallel_clients(self):
        m = self.start_moxy(self.conf(threads=2))

        def client(i):
            with Client(m.port) as c:
                return [c.request("GET", f"/echo?c={i}&r={j}").json()["target"] for j in range(10)]

        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(client, range(20), timeout=30))
        for i, targets in enumerate(results):
            self.assertEqual(targets, [f"/echo?c={i}&r={j}" for j in range(10)])
        self.assertEqual(len(self.origin.requests), 200)


if __name__ == "__main__":
    unittest.main()
