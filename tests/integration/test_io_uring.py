"""The workers' two read paths: io_uring (the default when the kernel allows
it) and libuv's epoll (`io_uring: false`). The worker says which it uses, and
both carry the same bytes: pipelined requests, a large body each way, a
client that stops reading. `make test` also runs the whole suite once on each
(MOXY_IO_URING=0 for epoll)."""
import os
import shutil
import signal
import socket
import tempfile
import time

from harness import (Client, MoxyTestCase, Reader, build_request, pattern, read_response,
                     SLOW, request, run_moxy, sha, simple_config)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])


class ReadPaths(MoxyTestCase):
    def setUp(self):
        super().setUp()
        self.origin = self.start_origin()

    def start(self, ring):
        return self.start_moxy(simple_config(self.origin.port, log_level="debug", io_uring=ring))

    def test_the_worker_reads_through_io_uring_unless_told_not_to(self):
        for ring, word in ((True, "io_uring"), (False, "epoll")):
            m = self.start(ring)
            m.wait_log(f"worker 1 running ({word} reads)")
            self.assertNotIn("io_uring unavailable", m.error_log())
            m.stop()

    def test_io_uring_is_the_default(self):
        if os.environ.get("MOXY_IO_URING") == "0":
            self.skipTest("MOXY_IO_URING=0 turns it off in every config")
        m = self.start_moxy(simple_config(self.origin.port, log_level="debug"))
        m.wait_log("worker 1 running (io_uring reads)")

    def exchange(self, m):
        """What a client sees from m, as comparable values."""
        seen = []
        # Three pipelined requests in one write, answered in order.
        s = socket.create_connection(("127.0.0.1", m.port), timeout=10)
        s.sendall(b"".join(build_request("GET", f"/echo?n={i}") for i in range(3)))
        reader = Reader(s)
        for i in range(3):
            r = read_response(reader)
            seen.append((r.status, r.json()["target"]))
        s.close()
        # 4 MiB up, 4 MiB down, on one keepalive connection.
        body = pattern(4 << 20)
        c = Client(m.port, timeout=30)
        r = c.request("POST", "/echo", body=body)
        seen.append((r.status, r.json()["body_len"], r.json()["body_sha256"]))
        r = c.request("GET", f"/bytes?n={4 << 20}")
        seen.append((r.status, len(r.body), sha(r.body)))
        c.close()
        return seen

    def test_both_paths_carry_the_same_bytes(self):
        results = []
        for ring in (True, False):
            m = self.start(ring)
            results.append(self.exchange(m))
            m.stop()
        self.assertEqual(results[0], results[1])
        self.assertEqual(results[0][:3], [(200, f"/echo?n={i}") for i in range(3)])
        self.assertEqual(results[0][3][:2], (200, 4 << 20))

    def test_a_client_that_stops_reading_holds_the_origin_back_on_both_paths(self):
        # 32 MiB the client does not read for a while: moxy stops reading the
        # origin (backpressure) instead of buffering; then every byte arrives.
        n = 32 << 20
        for ring in (True, False):
            m = self.start(ring)
            request(m.port, "GET", "/bytes?n=1000000")  # warm: buffers, pool
            before = rss_kb(m.pid)
            s = socket.create_connection(("127.0.0.1", m.port), timeout=30)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            s.sendall(build_request("GET", f"/bytes?n={n}"))
            time.sleep(0.5)
            grew = rss_kb(m.pid) - before
            print(f"\n    io_uring={ring}: RSS +{grew} KiB while the client does not read")
            self.assertLess(grew, 8 * 1024, f"io_uring={ring}: the response was buffered")
            r = read_response(Reader(s))
            self.assertEqual((r.status, len(r.body)), (200, n), f"io_uring={ring}")
            s.close()
            m.stop()

    def test_a_bad_value_names_the_key(self):
        d = tempfile.mkdtemp(prefix="moxy-uring-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "bad.yaml")
        with open(path, "w") as f:
            f.write(simple_config(self.origin.port) + "io_uring: maybe\n")
        p = run_moxy(["-t", "-c", path])
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("io_uring", p.stderr)
        self.assertRegex(p.stderr, r"bad\.yaml:\d+:\d+")

    def test_a_reload_keeps_the_running_read_path_and_says_so(self):
        m = self.start(True)
        m.wait_log("worker 1 running (io_uring reads)")
        with open(m.config_path) as f:
            text = f.read()
        self.assertIn("io_uring: true", text)
        with open(m.config_path, "w") as f:
            f.write(text.replace("io_uring: true", "io_uring: false"))
        since = m.log_size()
        m.signal(signal.SIGHUP)
        self.assertTrue(m.wait_log("reload: io_uring changed: takes effect at the next upgrade",
                                   since, 5 * SLOW), m.diagnostics())
        self.assertEqual(request(m.port, "GET", "/echo?after").status, 200)
        self.assertNotIn("running (epoll reads)", m.error_log())
