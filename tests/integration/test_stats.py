"""moxy.stats() / moxy.worker.stats() and the exit stats line, live: the
upstream reuse counter and the buffers idle client connections hold."""
import os
import tempfile

from harness import Client, MoxyTestCase, config, free_port, request, upstream

LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua", "stats.lua")


def stats_config(origin_port, **top):
    d = tempfile.mkdtemp(prefix="moxy-stats-")
    path = os.path.join(d, "stats.lua")
    with open(LUA) as f, open(path, "w") as out:
        out.write(f.read())
    svc = {"name": "web", "listeners": [f"127.0.0.1:{free_port()}"], "script": path,
           "upstream": "origin"}
    return config([svc], {"origin": upstream(origin_port)}, **top)


def stats(port):
    r = request(port, "GET", "/_stats")
    assert r.status == 200, r
    return r.json()


class Stats(MoxyTestCase):
    def test_reuse_counter_counts_pooled_upstream_connections(self):
        origin = self.start_origin()
        moxy = self.start_moxy(stats_config(origin.port, log_level="info"))
        before = stats(moxy.port)["stats"]
        self.assertEqual(before["upstream_requests"], 0)   # /_stats is answered locally
        n = 6
        with Client(moxy.port) as c:
            for i in range(n):
                self.assert_status(c.request("GET", f"/echo?r{i}"), 200, moxy)
        after = stats(moxy.port)["stats"]
        self.assertEqual(after["upstream_requests"], n)
        self.assertEqual(after["upstream_reused"], n - 1)  # one connect, then the pool
        self.assertEqual(after["requests"], before["requests"] + n + 1)
        self.assertGreaterEqual(after["connections_accepted"], before["connections_accepted"] + 2)
        # The same figures in the line moxy logs when it exits.
        moxy.stop()
        self.assertRegex(moxy.error_log(),
                         rf"stats \(at exit\): \d+ requests, \d+ connections accepted, "
                         rf"{n} upstream requests, {n - 1} over a reused connection")

    def test_fresh_connections_per_request_are_not_counted_as_reused(self):
        origin = self.start_origin()
        moxy = self.start_moxy(stats_config(origin.port, upstream_keepalive_pool_size=0))
        for i in range(3):
            self.assert_status(request(moxy.port, "GET", f"/echo?f{i}"), 200, moxy)
        s = stats(moxy.port)["stats"]
        self.assertEqual((s["upstream_requests"], s["upstream_reused"]), (3, 0))

    def test_idle_keepalive_connections_hold_no_buffers(self):
        origin = self.start_origin()
        moxy = self.start_moxy(stats_config(origin.port))
        clients = []
        try:
            for i in range(20):
                c = Client(moxy.port)
                clients.append(c)
                # A long header grows the connection's header and head buffers.
                r = c.request("GET", f"/echo?idle{i}", headers=[("X-Pad", "p" * 3000)])
                self.assert_status(r, 200, moxy)
            w = stats(moxy.port)["worker"]
            self.assertGreaterEqual(w["idle_connections"], 20)
            self.assertEqual(w["connections"], w["idle_connections"] + 1)  # + the /_stats one
            self.assertEqual(w["idle_buffer_bytes"], 0)
        finally:
            for c in clients:
                c.close()
