"""10k mixed requests (bounded in time) from 8 client threads: keep-alive and
not, GET/POST/HEAD, origin 404s and a dead upstream's 502s. Every response is
checked; moxy must stay up and print no sanitizer report (MoxyTestCase)."""
import os
import random
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

from harness import SLOW, Client, MoxyTestCase, config, free_port, pattern, service, sha, upstream

TOTAL = int(os.environ.get("MOXY_SOAK_TOTAL", "10000"))
WORKERS = 8
DEADLINE = 20 * SLOW


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


class Soak(MoxyTestCase):
    def test_10k_mixed(self):
        origin = self.start_origin()
        dead_listen = free_port()
        moxy = self.start_moxy(config([service("web", free_port()), service("dead", dead_listen, "dead")],
                                      {"origin": upstream(origin.port), "dead": upstream(free_port())}))
        lock = threading.Lock()
        state = {"next": 0, "done": 0, "origin": 0, "errors": []}
        stop_at = time.monotonic() + DEADLINE

        def one(kind, i, conn, rng):
            """Runs request i; returns the keep-alive connection to use next."""
            if kind in (7, 8):                     # fresh connection, Connection: close
                port, target = (dead_listen, "/echo") if kind == 8 else (moxy.port, f"/echo?i={i}")
                with Client(port) as c:
                    r = c.request("GET", target, [("Connection", "close")])
                    want = 502 if kind == 8 else 200
                    expect(r.status == want, f"status {r.status} != {want}")
                    expect(c.wait_closed()[0], "not closed after Connection: close")
                return conn
            conn = conn or Client(moxy.port)
            if kind <= 3:
                r = conn.request("GET", f"/echo?i={i}")
                expect(r.status == 200 and r.json()["target"] == f"/echo?i={i}", f"bad echo {r}")
            elif kind <= 5:
                body = pattern(rng.randrange(0, 4096))
                r = conn.request("POST", f"/echo?i={i}", body=body, chunked=kind == 5)
                expect(r.status == 200 and r.json()["body_sha256"] == sha(body), f"bad POST echo {r}")
            elif kind == 6:
                r = conn.request("GET", "/status?code=404")
                expect((r.status, r.body) == (404, b"status 404"), f"bad 404 {r}")
            else:
                r = conn.request("HEAD", "/bytes?n=100")
                expect((r.status, r.body) == (200, b""), f"bad HEAD {r}")
            return conn

        def worker(wid):
            rng, conn = random.Random(wid), None
            while time.monotonic() < stop_at and len(state["errors"]) < 20:
                with lock:
                    i = state["next"]
                    state["next"] += 1
                if i >= TOTAL:
                    break
                kind = rng.randrange(10)
                try:
                    conn = one(kind, i, conn, rng)
                    with lock:
                        state["done"] += 1
                        state["origin"] += kind != 8
                except Exception as e:
                    with lock:
                        state["errors"].append(f"request {i} kind {kind}: {type(e).__name__}: {e}")
                    if conn:
                        conn.close()
                    conn = None
            if conn:
                conn.close()

        nreqs = len(origin.requests)
        t0 = time.monotonic()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(worker, range(WORKERS)))
        elapsed = time.monotonic() - t0
        errors = state["errors"]
        self.assertEqual(errors, [], f"{len(errors)} bad responses, first: {errors[:5]}\n{moxy.diagnostics()}")
        self.assertEqual(state["done"], TOTAL, f"only {state['done']} requests in {elapsed:.1f}s")
        self.assertTrue(moxy.alive(), moxy.diagnostics())
        time.sleep(0.1)
        self.assertEqual(len(origin.requests) - nreqs, state["origin"])
        print(f"  soak: {TOTAL} requests in {elapsed:.1f}s", flush=True)


if __name__ == "__main__":
    unittest.main()
