#!/usr/bin/env python3
"""moxy benchmark harness (driven by scripts/bench.sh; see README.md beside this file).

Starts one nginx origin and, one after another, each proxy under test (nginx,
haproxy, moxy, nginx + lua, moxy + lua), all with one worker, all in front of
the same origin, and measures each one's RSS idle and with N idle keepalive
clients. Then, per path, the proxies take turns under wrk, round after round,
with CPU time per request from /proc. Prints a markdown table
and writes it to OUT/results.md (and the raw numbers to OUT/results.json).

Numbers on this 2-core shared machine swing 10-50% between runs (wrk, the
proxy and the origin share the cores; nothing is pinned), so only the ratios
within one run mean anything.
"""
import argparse
import glob
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NOOP_SCRIPT = os.path.join(HERE, "moxy_noop.lua")
TPL = os.path.join(HERE, "templates")
CLK_TCK = os.sysconf("SC_CLK_TCK")
UA = "moxy-bench/1"
NGINX_MODULE_DIRS = ["/usr/lib/nginx/modules", "/usr/share/nginx/modules"]


def env_int(name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        sys.exit(f"bench: {name} must be an integer")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# processes: every child is recorded in TMP/pids so bench.sh's EXIT trap can
# kill it by PID even if this script dies.

class Procs:
    def __init__(self, tmp):
        self.tmp = tmp
        self.live = []          # Popen objects
        self.pidfile = os.path.join(tmp, "pids")
        self.recorded = set()

    def _write(self):
        with open(self.pidfile + ".new", "w") as f:
            f.write("".join(f"{p}\n" for p in sorted(self.recorded)))
        os.replace(self.pidfile + ".new", self.pidfile)

    def _record(self, pid):
        self.recorded.add(pid)
        self._write()

    def start(self, argv, logpath, cwd=None):
        out = open(logpath, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, cwd=cwd,
                             start_new_session=True)
        out.close()
        self._record(p.pid)
        self.live.append(p)
        return p

    def note_extra(self, pid):
        """A PID we did not spawn directly (an nginx worker) to kill at exit."""
        self._record(pid)

    def stop(self, p, sig=signal.SIGTERM, grace=5.0):
        if p.poll() is None:
            kids = children(p.pid)
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
            # an nginx worker outlives a master that was SIGKILLed
            for k in kids:
                if pid_alive(k):
                    try:
                        os.kill(k, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        if p in self.live:
            self.live.remove(p)
        # forget what has exited so the shell's backstop never signals a reused PID
        self.recorded = {q for q in self.recorded if pid_alive(q)}
        self._write()

    def stop_all(self):
        for p in list(self.live):
            self.stop(p, grace=3.0)


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rindex(")") + 2] != "Z"
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False


def children(pid):
    kids = []
    for fn in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(fn) as f:
                kids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return kids


def cpu_ticks(pids):
    """utime + stime of the processes (all their threads), in clock ticks."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])   # stat fields 14 and 15
    return total


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def nofile_limit():
    """The descriptor limit this process (and so every proxy it starts) got."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard if soft == resource.RLIM_INFINITY else soft


def tail(path, n=15):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return "(no log)"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def render(name, out, **vals):
    with open(os.path.join(TPL, name)) as f:
        text = f.read()
    for k, v in vals.items():
        text = text.replace(f"@{k}@", str(v))
    left = re.findall(r"@[A-Z0-9_]+@", text)
    if left:
        raise RuntimeError(f"{name}: unfilled placeholders {left}")
    with open(out, "w") as f:
        f.write(text)
    return out


# --------------------------------------------------------------------------
# a tiny HTTP/1.1 client (sanity checks, idle connections, callgrind driver)

def request_bytes(port, path):
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"User-Agent: {UA}\r\n\r\n").encode()


def read_response(sock, buf=b""):
    """Reads one response; returns (status, headers{lower: value}, body, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed in the body")
            buf += chunk
        return status, headers, buf[:n], buf[n:]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            while b"\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed in a chunk size")
                buf += chunk
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed in a chunk")
                buf += chunk
            if size == 0:
                # no trailers expected: the final CRLF follows
                return status, headers, body, buf[2:]
            body += buf[:size]
            buf = buf[size + 2:]
    raise ConnectionError("response has neither Content-Length nor chunked")


def http_get(port, path, timeout=2.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request_bytes(port, path))
        status, headers, body, _ = read_response(s)
        return status, headers, body


def wait_ready(port, proc, timeout):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        try:
            status, _, _ = http_get(port, "/", timeout=1.0)
            if status == 200:
                return None
            last = f"GET / answered {status}"
        except OSError as e:
            last = str(e)
        time.sleep(0.1)
    return f"not ready after {timeout}s ({last})"


def open_idle(port, n, socks):
    """n connections, one GET answered on each, left open, appended to socks
    (so that a failure part-way still tells how many it got)."""
    req = request_bytes(port, "/")
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5.0)
        s.sendall(req)
        read_response(s)
        socks.append(s)


def count_open(socks):
    """A socket the proxy closed is readable (EOF); an idle open one is not."""
    poller = select.poll()            # select() stops at descriptor 1024
    for s in socks:
        poller.register(s, select.POLLIN)
    closed = len(poller.poll(0))
    return len(socks) - closed


def keepalive_requests(port, path, n, timeout=10.0):
    """n sequential requests on one keepalive connection (for callgrind)."""
    req = request_bytes(port, path)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        rest = b""
        for _ in range(n):
            s.sendall(req)
            status, _, _, rest = read_response(s, rest)
            if status != 200:
                raise RuntimeError(f"status {status}")


# --------------------------------------------------------------------------
# wrk

def to_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        return None
    x = float(m.group(1))
    return {"us": x / 1000, "ms": x, "s": x * 1000, "m": x * 60000}[m.group(2)]


def run_wrk(port, path, seconds, conns, threads=1, script=None):
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency",
            "-H", f"User-Agent: {UA}", f"http://127.0.0.1:{port}{path}"]
    if script:
        argv[1:1] = ["-s", script]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    out = p.stdout
    r = {"raw": out, "errors": []}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        r[f"p{pct}"] = to_ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["errors"].append(f"{m.group(1)} non-2xx")
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m and any(int(x) for x in m.groups()):
        r["errors"].append("socket errors: connect %s, read %s, write %s, timeout %s" % m.groups())
    if p.returncode != 0:
        r["errors"].append(f"wrk exit {p.returncode}: {p.stderr.strip()[:200]}")
    return r


# --------------------------------------------------------------------------
# the servers

def nginx_lua_modules():
    """Absolute paths of the NDK and lua modules (lua needs NDK's symbols)."""
    mods = []
    for name in ("ndk_http_module.so", "ngx_http_lua_module.so"):
        for d in NGINX_MODULE_DIRS:
            path = os.path.join(d, name)
            if os.path.exists(path):
                mods.append(os.path.realpath(path))
                break
    if not any(m.endswith("ngx_http_lua_module.so") for m in mods):
        return None
    return mods


def moxy_read_path(logp):
    """Which way moxy's workers read (src/net/ring.c): its log says when io_uring was refused."""
    try:
        with open(logp, errors="replace") as f:
            text = f.read()
    except OSError:
        text = ""
    if "io_uring unavailable" in text:
        return "workers read through epoll: io_uring unavailable here (see its log)"
    return "workers read through io_uring"


class Server:
    """One started server: its Popen, the PIDs to measure and the log."""

    def __init__(self, name, proc, port, logpath, main_pid=None):
        self.name = name
        self.proc = proc
        self.port = port
        self.log = logpath
        self.main_pid = main_pid or proc.pid   # the process that serves

    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)


class Bench:
    def __init__(self, args):
        self.a = args
        self.tmp = args.tmp
        self.procs = Procs(args.tmp)
        self.seconds = env_int("BENCH_SECONDS", 10)
        self.warmup = env_int("BENCH_WARMUP", 2)
        self.rounds = max(1, env_int("BENCH_ROUNDS", 5))
        # wrk takes whole seconds
        self.round_seconds = max(1, self.seconds // self.rounds)
        self.conns = env_int("BENCH_CONNS", 50)
        self.idle = env_int("BENCH_IDLE_CONNS", 10000)
        # slots for the idle clients, wrk and the upstream side
        self.worker_conns = self.idle + 2048
        self.paths = os.environ.get("BENCH_PATHS", "/ /1k").split()
        self.cg = os.environ.get("BENCH_CALLGRIND", "1") == "1"
        self.reuse_on = os.environ.get("BENCH_REUSE", "1") == "1"
        self.reuse_threads = env_int("BENCH_REUSE_THREADS", 2)
        self.overhead_on = os.environ.get("BENCH_OVERHEAD", "1") == "1"
        self.overhead_rounds = env_int("BENCH_OVERHEAD_ROUNDS", 12)
        self.overhead_seconds = env_int("BENCH_OVERHEAD_SECONDS", 2)
        self.cg_reqs = env_int("BENCH_CALLGRIND_REQUESTS", 20000)
        self.cg_warm = env_int("BENCH_CALLGRIND_WARMUP", 200)
        self.only = set(os.environ.get("BENCH_ONLY", "").split(",")) - {""}
        self.lua_mods = nginx_lua_modules()
        self.moxy = os.path.abspath(args.moxy)
        self.moxy_script = self.find_moxy_script()
        self.origin = None

    def find_moxy_script(self):
        s = os.environ.get("MOXY_SCRIPT")
        if s:
            return os.path.abspath(s)
        ex = os.path.join(self.a.root, "examples", "bench.lua")
        if os.path.exists(ex):
            return ex
        # The workload the nginx+lua row runs, written for moxy.
        ws = os.path.join(self.a.root, "scripts", "bench", "moxy_bench.lua")
        return ws if os.path.exists(ws) else None

    def prefix(self, name):
        d = os.path.join(self.tmp, name)
        os.makedirs(os.path.join(d, "logs"), exist_ok=True)
        return d

    # -- starters: each returns a Server (not yet known to be ready)

    def start_origin(self):
        port = free_port()
        pre = self.prefix("origin")
        conf = render("origin.nginx.conf", os.path.join(pre, "nginx.conf"),
                      PREFIX=pre, PORT=port, BODY1K="x" * 1023 + "\\n")
        logp = os.path.join(pre, "logs", "stderr.log")
        p = self.procs.start(["nginx", "-p", pre, "-e", f"{pre}/logs/error.log", "-c", conf], logp)
        return Server("origin", p, port, logp)

    def nginx_conf(self, name, port, lua, callgrind=False, worker_conns=None):
        pre = self.prefix(name)
        mods = ""
        snippet = ""
        if lua:
            mods = "\n".join(f"load_module {m};" for m in self.lua_mods)
            with open(os.path.join(TPL, "lua.nginx.snippet")) as f:
                snippet = f.read().rstrip()
        return pre, render("proxy.nginx.conf", os.path.join(pre, "nginx.conf"),
                           PREFIX=pre, PORT=port, ORIGIN_PORT=self.origin.port,
                           LOAD_MODULES=mods, LUA=snippet, WORKER_CONNS=worker_conns or self.worker_conns,
                           NOFILE=nofile_limit(),
                           MASTER="master_process off;" if callgrind else "")

    def start_nginx(self, name, lua=False, wrap=(), callgrind=False, worker_conns=None):
        port = free_port()
        pre, conf = self.nginx_conf(name, port, lua, callgrind, worker_conns)
        logp = os.path.join(pre, "logs", "stderr.log")
        p = self.procs.start(list(wrap) + ["nginx", "-p", pre, "-e", f"{pre}/logs/error.log",
                                           "-c", conf], logp)
        return Server(name, p, port, logp)

    def start_haproxy(self, name, wrap=()):
        port = free_port()
        pre = self.prefix(name)
        conf = render("haproxy.cfg", os.path.join(pre, "haproxy.cfg"),
                      PREFIX=pre, PORT=port, ORIGIN_PORT=self.origin.port,
                      # two descriptors per maxconn, within the limit it inherits
                      WORKER_CONNS=min(self.worker_conns, (nofile_limit() - 64) // 2))
        logp = os.path.join(pre, "stderr.log")
        p = self.procs.start(list(wrap) + ["haproxy", "-db", "-f", conf], logp)
        return Server(name, p, port, logp)

    def start_moxy(self, name, script=None, wrap=(), threads=1):
        port = free_port()
        pre = self.prefix(name)
        lua_path = ""
        script_line = ""
        if script:
            lua_path = 'lua_path: "lua/?.lua;examples/?.lua;scripts/bench/?.lua"'
            script_line = f"    script: {script}"
        conf = render("moxy.yaml", os.path.join(pre, "moxy.yaml"),
                      PREFIX=pre, PORT=port, ORIGIN_PORT=self.origin.port,
                      LUA_PATH=lua_path, SCRIPT=script_line, THREADS=threads)
        logp = os.path.join(pre, "moxy.log")
        if not os.access(self.moxy, os.X_OK):
            raise FileNotFoundError(f"{self.moxy}: not an executable")
        p = self.procs.start(list(wrap) + [self.moxy, "-c", conf], logp, cwd=self.a.root)
        return Server(name, p, port, logp)

    # -- the rows

    def rows(self):
        rows = [
            ("nginx", "nginx", lambda: self.start_nginx("nginx")),
            ("haproxy", "nginx", lambda: self.start_haproxy("haproxy")),
            ("moxy", "nginx", lambda: self.start_moxy("moxy")),
        ]
        if self.lua_mods:
            rows.append(("nginx+lua", "nginx+lua", lambda: self.start_nginx("nginx_lua", lua=True)))
        else:
            self.notes.append("nginx+lua skipped: ngx_http_lua_module.so not found "
                              f"in {', '.join(NGINX_MODULE_DIRS)} (libnginx-mod-http-lua)")
        if self.moxy_script:
            rows.append(("moxy+lua", "nginx+lua",
                         lambda: self.start_moxy("moxy_lua", script=self.moxy_script)))
        else:
            self.notes.append("moxy+lua skipped: no script (set MOXY_SCRIPT, e.g. "
                              "MOXY_SCRIPT=scripts/bench/moxy_bench.lua, or add examples/bench.lua)")
        if self.only:
            rows = [r for r in rows if r[0] in self.only]
        return rows

    def sanity(self, srv, scripted):
        status, _, body = http_get(srv.port, "/")
        if status != 200 or body != b"hello world\n":
            return f"GET / -> {status} {body[:40]!r}"
        if "/1k" in self.paths:
            status, _, body = http_get(srv.port, "/1k")
            if status != 200 or len(body) != 1024:
                return f"GET /1k -> {status}, {len(body)} bytes"
        if scripted:
            status, headers, body = http_get(srv.port, "/_xbench")
            if body != UA.encode():
                return f"the script did not send x-bench upstream (origin saw {body[:40]!r})"
            if "x-served-by" not in headers:
                return "the script did not set x-served-by"
        return None

    def prepare(self, name, base, start):
        """Starts one row's server, checks it and measures its memory (idle, then with
        the idle clients). Returns (row, server); the server is left running for the
        loaded rounds, or stopped and None when the row failed."""
        row = {"name": name, "base": base, "status": "ok", "notes": [], "paths": {}}
        log(f"bench: {name}")
        try:
            srv = start()
        except Exception as e:       # noqa: BLE001 - a row failing must not stop the run
            row.update(status="failed", error=f"could not start: {e}")
            return row, None
        ok = False
        try:
            err = wait_ready(srv.port, srv.proc, 10)
            if err:
                row.update(status="failed", error=err, log=tail(srv.log))
                return row, None
            time.sleep(0.3)
            kids = children(srv.proc.pid)
            for k in kids:
                self.procs.note_extra(k)
            if name.startswith("nginx") and kids:
                srv.main_pid = kids[0]           # the worker; the master only supervises
                row["master_rss_kib"] = rss_kib(srv.proc.pid)
            try:
                err = self.sanity(srv, base == "nginx+lua")
            except (OSError, ValueError) as e:
                err = f"sanity request failed: {e}"
            if err:
                row.update(status="failed", error=err, log=tail(srv.log))
                return row, None
            row["rss_idle_kib"] = rss_kib(srv.main_pid)

            socks = []
            try:
                open_idle(srv.port, self.idle, socks)
                time.sleep(0.5)
                row["rss_conns_kib"] = rss_kib(srv.main_pid)
                row["conns_open"] = count_open(socks)
                if row["conns_open"] < self.idle:
                    row["notes"].append(f"only {row['conns_open']}/{self.idle} idle conns stayed open")
            except (OSError, ValueError) as e:
                row["notes"].append(f"idle connections: {e} after {len(socks)}")
                row["rss_conns_kib"] = None
            finally:
                for s in socks:
                    s.close()
            time.sleep(0.3)
            if name == "nginx":
                row["rss_idle_small_kib"] = self.nginx_small_idle()
            ok = True
            return row, srv
        finally:
            if not ok:
                self.procs.stop(srv.proc)

    def load(self, live):
        """The loaded runs: for each path, every live row gets BENCH_ROUNDS rounds of
        wrk, the rows taking turns (the order rotated every round), so that all of
        them see the same machine: measured one after another, a minute apart, two
        rows of the same build differ by several % on this machine. Totals: CPU over
        all rounds ÷ requests over all rounds; req/s = requests ÷ wrk's seconds;
        p50 and p99 are the medians of the rounds' figures."""
        for path in self.paths:
            acc = {}
            for row, srv in live:
                if self.warmup > 0 and row["status"] == "ok":
                    run_wrk(srv.port, path, self.warmup, self.conns)
                acc[row["name"]] = {"ticks": 0, "oticks": 0, "reqs": 0, "wall": 0.0,
                                    "p50": [], "p99": [], "cpu": [], "errors": []}
            for i in range(self.rounds):
                k = i % len(live)
                for row, srv in live[k:] + live[:k]:
                    if row["status"] != "ok":
                        continue
                    a = acc[row["name"]]
                    pids, opids = srv.pids(), self.origin.pids()
                    t0, c0, o0 = time.time(), cpu_ticks(pids), cpu_ticks(opids)
                    r = run_wrk(srv.port, path, self.round_seconds, self.conns)
                    t1, c1, o1 = time.time(), cpu_ticks(pids), cpu_ticks(opids)
                    a["ticks"] += c1 - c0
                    a["oticks"] += o1 - o0
                    a["reqs"] += r["requests"]
                    a["wall"] += t1 - t0
                    for q in ("p50", "p99"):
                        if r[q] is not None:
                            a[q].append(r[q])
                    if r["requests"]:
                        a["cpu"].append((c1 - c0) / CLK_TCK * 1e6 / r["requests"])
                    a["errors"] += r["errors"]
                    if srv.proc.poll() is not None:
                        row.update(status="failed", error=f"died during the run (status {srv.proc.returncode})",
                                   log=tail(srv.log))
            for row, srv in live:
                if row["status"] != "ok":
                    continue
                a = acc[row["name"]]
                reqs, wall = a["reqs"], a["wall"]
                p = {"requests": reqs, "rounds": len(a["cpu"]), "round_cpu_us_per_req": a["cpu"],
                     # wrk's own duration; the wall time around it adds its start and exit
                     "rps": reqs / (self.round_seconds * len(a["cpu"])) if a["cpu"] else 0.0,
                     "p50": statistics.median(a["p50"]) if a["p50"] else None,
                     "p99": statistics.median(a["p99"]) if a["p99"] else None,
                     "cpu_us_per_req": a["ticks"] / CLK_TCK * 1e6 / reqs if reqs else None,
                     "cpu_pct": a["ticks"] / CLK_TCK / wall * 100 if wall else 0.0,
                     "origin_cpu_pct": a["oticks"] / CLK_TCK / wall * 100 if wall else 0.0,
                     "origin_cpu_us_per_req": a["oticks"] / CLK_TCK * 1e6 / reqs if reqs else None,
                     "errors": a["errors"]}
                row["paths"][path] = p
                if p["errors"]:
                    row["notes"].append(f"{path}: " + "; ".join(sorted(set(p["errors"]))))
                if not reqs:
                    row.update(status="failed", error="wrk completed no requests", log=tail(srv.log))
        for row, srv in live:
            if row["status"] == "ok":
                row["rss_after_kib"] = rss_kib(srv.main_pid)
            if row["name"].startswith("moxy"):
                row["notes"].append(moxy_read_path(srv.log))

    def nginx_small_idle(self):
        """The nginx worker's idle RSS with worker_connections 512: what its
        preallocated connection slots for the idle clients cost is the
        difference, and belongs to those connections."""
        srv = self.start_nginx("nginx_small", worker_conns=512)
        try:
            if wait_ready(srv.port, srv.proc, 10):
                return None
            time.sleep(0.3)
            kids = children(srv.proc.pid)
            for k in kids:
                self.procs.note_extra(k)
            return rss_kib(kids[0]) if kids else None
        finally:
            self.procs.stop(srv.proc)

    # -- upstream connection reuse (moxy.stats()), several workers, mixed paths

    def reuse(self):
        log("bench: upstream reuse")
        row = {"threads": self.reuse_threads}
        srv = None
        try:
            srv = self.start_moxy("moxy_reuse", script=os.path.join(HERE, "moxy_stats.lua"),
                                  threads=self.reuse_threads)
            err = wait_ready(srv.port, srv.proc, 10)
            if err:
                raise RuntimeError(f"{err}\n{tail(srv.log)}")

            def stats():
                status, _, body = http_get(srv.port, "/_moxy_stats")
                if status != 200:
                    raise RuntimeError(f"GET /_moxy_stats -> {status}")
                return json.loads(body)

            s0 = stats()
            r = run_wrk(srv.port, "/", self.seconds, self.conns, threads=2,
                        script=os.path.join(HERE, "mixed.lua"))
            s1 = stats()
            up = s1["upstream_requests"] - s0["upstream_requests"]
            reused = s1["upstream_reused"] - s0["upstream_reused"]
            row.update(requests=r["requests"], rps=r["rps"], errors=r["errors"],
                       upstream_requests=up, upstream_reused=reused,
                       ratio=reused / up if up else None, totals=s1)
        except Exception as e:   # noqa: BLE001
            row["error"] = str(e).strip()
        finally:
            if srv:
                self.procs.stop(srv.proc)
        return row

    # -- the Lua overhead: four empty handlers against no script, paired

    def overhead(self):
        """moxy and moxy+noop run side by side; wrk alternates between them, round after
        round, so that both see the same machine: a few % is below this machine's
        drift between two rows measured a minute apart."""
        log("bench: Lua overhead (moxy against moxy+noop, alternating)")
        row = {"rounds": [], "seconds": self.overhead_seconds}
        srvs = []
        try:
            for name, script in (("moxy", None), ("moxy+noop", NOOP_SCRIPT)):
                srv = self.start_moxy("ovh_" + name.replace("+", "_"), script=script)
                srv.name = name
                srvs.append(srv)
                err = wait_ready(srv.port, srv.proc, 10)
                if err:
                    raise RuntimeError(f"{name}: {err}\n{tail(srv.log)}")
                run_wrk(srv.port, "/", self.warmup, self.conns)
            tot = {s.name: [0, 0] for s in srvs}
            for i in range(self.overhead_rounds):
                rnd = {}
                # alternate which one goes first
                for srv in (srvs if i % 2 == 0 else srvs[::-1]):
                    pids = srv.pids()
                    c0 = cpu_ticks(pids)
                    r = run_wrk(srv.port, "/", self.overhead_seconds, self.conns)
                    c1 = cpu_ticks(pids)
                    if r["errors"] or not r["requests"]:
                        raise RuntimeError(f"{srv.name}: " + ("; ".join(r["errors"]) or "no requests"))
                    rnd[srv.name] = (c1 - c0) / CLK_TCK * 1e6 / r["requests"]
                    tot[srv.name][0] += c1 - c0
                    tot[srv.name][1] += r["requests"]
                row["rounds"].append(rnd)
            row["cpu_us_per_req"] = {n: t[0] / CLK_TCK * 1e6 / t[1] for n, t in tot.items()}
        except Exception as e:   # noqa: BLE001
            row["error"] = str(e).strip()
        finally:
            for srv in srvs:
                self.procs.stop(srv.proc)
        return row

    # -- callgrind: instructions per request

    def callgrind(self):
        rows = []
        targets = [("nginx", lambda w: self.start_nginx("cg_nginx", wrap=w, callgrind=True))]
        if self.lua_mods:
            targets.append(("nginx+lua", lambda w: self.start_nginx("cg_nginx_lua", lua=True,
                                                                     wrap=w, callgrind=True)))
        targets.append(("moxy", lambda w: self.start_moxy("cg_moxy", wrap=w)))
        targets.append(("moxy+noop", lambda w: self.start_moxy("cg_moxy_noop", script=NOOP_SCRIPT,
                                                                wrap=w)))
        if self.moxy_script:
            targets.append(("moxy+lua", lambda w: self.start_moxy("cg_moxy_lua", script=self.moxy_script,
                                                                   wrap=w)))
        if self.only:
            targets = [t for t in targets if t[0] in self.only]
        for name, start in targets:
            log(f"bench: callgrind {name}")
            cgdir = os.path.join(self.tmp, "cg_" + name.replace("+", "_"))
            os.makedirs(cgdir, exist_ok=True)
            wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cgdir}/cg.%p.out"]
            row = {"name": name}
            srv = None
            try:
                srv = start(wrap)
                err = wait_ready(srv.port, srv.proc, 60)
                if err:
                    raise RuntimeError(f"{err}\n{tail(srv.log)}")
                keepalive_requests(srv.port, "/", self.cg_warm, timeout=30)
                self.cg_control("-z", srv.proc.pid)
                t0 = time.time()
                keepalive_requests(srv.port, "/", self.cg_reqs, timeout=30)
                row["seconds"] = time.time() - t0
                before = set(glob.glob(f"{cgdir}/cg.*.out.*"))
                self.cg_control("-d", srv.proc.pid)
                dumps = sorted(set(glob.glob(f"{cgdir}/cg.*.out.*")) - before)
                if not dumps:
                    raise RuntimeError("callgrind wrote no dump")
                ir = None
                with open(dumps[-1]) as f:
                    for line in f:
                        if line.startswith("totals:") or (ir is None and line.startswith("summary:")):
                            ir = int(line.split()[1])
                row["ir"] = ir
                row["ir_per_req"] = ir / self.cg_reqs
            except Exception as e:   # noqa: BLE001
                row["error"] = str(e).strip()
            finally:
                if srv:
                    self.procs.stop(srv.proc, sig=signal.SIGINT if name.startswith("moxy") else signal.SIGTERM,
                                    grace=15)
            rows.append(row)
        return rows

    @staticmethod
    def cg_control(flag, pid):
        p = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True,
                           text=True, timeout=30)
        if p.returncode != 0 or "OK" not in p.stdout:
            raise RuntimeError(f"callgrind_control {flag}: {p.stdout.strip()} {p.stderr.strip()}")

    # -- report

    def run(self):
        self.notes = []
        t_start = time.time()
        self.origin = self.start_origin()
        err = wait_ready(self.origin.port, self.origin.proc, 10)
        if err:
            sys.exit(f"bench: origin nginx failed: {err}\n{tail(self.origin.log)}\n"
                     f"{tail(os.path.join(self.tmp, 'origin', 'logs', 'error.log'))}")
        time.sleep(0.2)
        for k in children(self.origin.proc.pid):
            self.procs.note_extra(k)
        results, live = [], []
        try:
            for n, b, st in self.rows():
                row, srv = self.prepare(n, b, st)
                results.append(row)
                if srv:
                    live.append((row, srv))
            if live:
                log("bench: loaded rounds (" + ", ".join(r["name"] for r, _ in live) + " taking turns)")
                self.load(live)
        finally:
            for _, srv in live:
                self.procs.stop(srv.proc)
        reuse = self.reuse() if self.reuse_on else None
        overhead = (self.overhead() if self.overhead_on and (not self.only or "moxy+noop" in self.only)
                    else None)
        cg = self.callgrind() if self.cg else None
        self.procs.stop(self.origin.proc)
        report = self.report(results, cg, time.time() - t_start, reuse, overhead)
        print(report)
        os.makedirs(self.a.out, exist_ok=True)
        with open(os.path.join(self.a.out, "results.md"), "w") as f:
            f.write(report)
        with open(os.path.join(self.a.out, "results.json"), "w") as f:
            json.dump({"settings": self.settings(), "rows": results, "callgrind": cg,
                       "reuse": reuse, "lua_overhead": overhead}, f, indent=1)
        log(f"bench: wrote {os.path.join(self.a.out, 'results.md')}")
        return 0

    def settings(self):
        return {"seconds": self.seconds, "warmup": self.warmup, "conns": self.conns,
                "idle_conns": self.idle, "paths": self.paths, "moxy": self.moxy,
                "moxy_script": self.moxy_script}

    def report(self, results, cg, elapsed, reuse=None, overhead=None):
        by = {r["name"]: r for r in results}
        L = []
        L.append("# moxy benchmark\n")
        L.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, "
                 f"kernel {platform.release()}; {versions()}.")
        L.append(f"Per path and proxy: {self.rounds} rounds of `wrk -t1 -c{self.conns} "
                 f"-d{self.round_seconds}s --latency` after a {self.warmup}s warm-up, the proxies "
                 f"taking turns (the order rotated every round), all of them started and idle "
                 f"while another is loaded; every server has one worker and proxies to one nginx "
                 f"origin over upstream keepalive. Nothing pinned: numbers swing 10-50% between runs "
                 f"on this machine, compare only the ratios within one run.\n")
        def f(v, fmt):
            return "-" if v is None else format(v, fmt)

        def ratio(a, b):
            return "-" if a is None or not b else f"{a / b:.2f}"

        def section(title, intro, res):
            """A section's title and text; False (and the error) when its measure failed."""
            L.append(f"\n## {title}\n")
            L.append(intro + "\n")
            if "error" in res:
                L.append("- failed: " + res["error"].replace("\n", "\n  "))
                return False
            return True

        for i, path in enumerate(self.paths):
            first = i == 0
            body = "12-byte body" if path == "/" else ("1 KiB body" if path == "/1k" else path)
            L.append(f"## GET {path} ({body})\n")
            if first:
                L.append("| proxy | req/s | p50 ms | p99 ms | CPU µs/req | RSS idle MiB | "
                         f"RSS {self.idle} conns MiB | KiB/conn | req/s × base | CPU/req × base | RSS × base |")
                L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            else:
                L.append("| proxy | req/s | p50 ms | p99 ms | CPU µs/req | req/s × base | CPU/req × base |")
                L.append("|---|---:|---:|---:|---:|---:|---:|")
            for r in results:
                label = r["name"] + (" †" if r["base"] != "nginx" else "")
                if r["status"] != "ok":
                    cols = 11 if first else 7
                    L.append(f"| {label} | failed |" + " |" * (cols - 2))
                    continue
                p = r["paths"].get(path, {})
                b = by.get(r["base"])
                bp = b["paths"].get(path, {}) if b and b["status"] == "ok" else {}
                cells = [label, f(p.get("rps"), ".0f"), f(p.get("p50"), ".2f"), f(p.get("p99"), ".2f"),
                         f(p.get("cpu_us_per_req"), ".1f")]
                if first:
                    ri, rc = r.get("rss_idle_kib"), r.get("rss_conns_kib")
                    per = (rc - ri) / self.idle if rc is not None and ri is not None else None
                    cells += [f(ri and ri / 1024, ".1f"), f(rc and rc / 1024, ".1f"), f(per, ".2f")]
                cells += [ratio(p.get("rps"), bp.get("rps")),
                          ratio(p.get("cpu_us_per_req"), bp.get("cpu_us_per_req"))]
                if first:
                    bb = b if b and b["status"] == "ok" else {}
                    cells.append(ratio(r.get("rss_conns_kib"), bb.get("rss_conns_kib")))
                L.append("| " + " | ".join(cells) + " |")
            spreads = []
            for r in results:
                b = by.get(r["base"])
                if r is b or r["status"] != "ok" or not b or b["status"] != "ok":
                    continue
                mine = r["paths"].get(path, {}).get("round_cpu_us_per_req", [])
                base = b["paths"].get(path, {}).get("round_cpu_us_per_req", [])
                rs = sorted(x / y for x, y in zip(mine, base) if y)
                if len(rs) > 1:
                    spreads.append(f"{r['name']} {rs[0]:.2f}–{rs[-1]:.2f} (median "
                                   f"{statistics.median(rs):.2f})")
            if spreads:
                L.append("\nCPU/req × base, round by round: " + "; ".join(spreads) + ".")
            L.append("")
        L.append("Ratios: plain rows against nginx; † scripted rows against nginx+lua. "
                 "CPU µs/req = the proxy's utime+stime (all threads, all its processes) over its wrk "
                 "rounds ÷ the requests they completed; req/s = those requests ÷ wrk's seconds; p50 "
                 "and p99 = the medians of the rounds' figures. RSS = VmRSS of the serving process (for nginx the worker; "
                 f"the master adds about {master_rss(results)}), idle after start and with "
                 f"{self.idle} idle keepalive clients that each got one answer; RSS × base compares the latter.\n")

        L.append("## Details\n")
        for r in results:
            if r["status"] != "ok":
                L.append(f"- **{r['name']}: failed** — {r.get('error', '')}")
                if r.get("log"):
                    L.append("\n  ```\n" + "\n".join("  " + x for x in r["log"].splitlines()) + "\n  ```")
                continue
            parts = []
            for path, p in r["paths"].items():
                parts.append(f"{path}: proxy CPU {p['cpu_pct']:.0f}%, origin CPU {p['origin_cpu_pct']:.0f}% "
                             f"({f(p['origin_cpu_us_per_req'], '.1f')} µs/req)")
            extra = f"; idle conns open {r.get('conns_open', '-')}/{self.idle}"
            if r.get("rss_after_kib"):
                extra += f"; RSS after load {r['rss_after_kib'] / 1024:.1f} MiB"
            small, rc = r.get("rss_idle_small_kib"), r.get("rss_conns_kib")
            if small and rc:
                extra += (f"; idle RSS with worker_connections 512: {small / 1024:.1f} MiB, so "
                          f"{(rc - small) * 1024 / self.idle:.0f} B/conn counting the "
                          f"{self.worker_conns} preallocated slots")
            L.append(f"- {r['name']}: " + "; ".join(parts) + extra)
            for n in r["notes"]:
                L.append(f"  - note: {n}")
        for n in self.notes:
            L.append(f"- {n}")
        L.append("\nCPU % is of one core; the origin is not the bottleneck while it stays well under 100%.")

        if reuse is not None:
            if section("Upstream connection reuse (moxy.stats())",
                       f"moxy with threads: {reuse['threads']}, `wrk -t2 -c{self.conns} -d{self.seconds}s` "
                       "alternating GET / and GET /1k (scripts/bench/mixed.lua); upstream_requests and "
                       "upstream_reused from moxy.stats() (all workers) before and after, cold pool "
                       "included.", reuse):
                L.append("| requests (wrk) | upstream requests | over a reused connection | new connections | reuse |")
                L.append("|---:|---:|---:|---:|---:|")
                ratio_s = "-" if reuse["ratio"] is None else f"{reuse['ratio'] * 100:.3f}%"
                L.append(f"| {reuse['requests']} | {reuse['upstream_requests']} | {reuse['upstream_reused']} | "
                         f"{reuse['upstream_requests'] - reuse['upstream_reused']} | {ratio_s} |")
                if reuse["errors"]:
                    L.append("\n- note: " + "; ".join(reuse["errors"]))
        if overhead is not None:
            if section("Lua overhead: four empty handlers (scripts/bench/moxy_noop.lua)",
                       f"moxy with no script and moxy+noop (`request_filter`, `upstream_request_filter`, "
                       f"`response_filter`, `logging`, each empty) run side by side; "
                       f"`wrk -t1 -c{self.conns} -d{self.overhead_seconds}s` GET / alternates between "
                       "them, the order swapped every round. CPU µs/req as above.", overhead):
                L.append("| round | moxy CPU µs/req | moxy+noop CPU µs/req | × moxy |")
                L.append("|---|---:|---:|---:|")
                rows = list(enumerate(overhead["rounds"], 1)) + [("all", overhead["cpu_us_per_req"])]
                for i, rd in rows:
                    a, b = rd.get("moxy"), rd.get("moxy+noop")
                    L.append(f"| {i} | {f(a, '.2f')} | {f(b, '.2f')} | {ratio(b, a)} |")
                rs = sorted(rd["moxy+noop"] / rd["moxy"] for rd in overhead["rounds"]
                            if rd.get("moxy") and rd.get("moxy+noop"))
                if rs:
                    L.append(f"\nThe target (≤ 1.05×) reads on the \"all\" row: total CPU over total "
                             f"requests. The rounds' ratios range {rs[0]:.2f}–{rs[-1]:.2f} "
                             f"(median {statistics.median(rs):.2f}): one round alone says little.")
        if cg is not None:
            L.append(f"\n## Instructions per request (callgrind)\n")
            L.append(f"{self.cg_reqs} sequential GET / on one keepalive connection after {self.cg_warm} "
                     "warm-up requests; Ir between `callgrind_control -z` and `-d`, ÷ requests "
                     "(all threads; nginx with master_process off).\n")
            L.append("| proxy | Ir/request | × nginx | × nginx+lua |")
            L.append("|---|---:|---:|---:|")
            cgby = {c["name"]: c for c in cg}
            for c in cg:
                if "ir_per_req" not in c:
                    L.append(f"| {c['name']} | failed | - | - |")
                    continue
                vs_lua = (ratio(c["ir_per_req"], cgby.get("nginx+lua", {}).get("ir_per_req"))
                          if c["name"].endswith("lua") else "")
                L.append(f"| {c['name']} | {c['ir_per_req']:,.0f} | "
                         f"{ratio(c['ir_per_req'], cgby.get('nginx', {}).get('ir_per_req'))} | {vs_lua} |")
            noop, plain = cgby.get("moxy+noop", {}), cgby.get("moxy", {})
            if noop.get("ir_per_req") and plain.get("ir_per_req"):
                L.append(f"\nLua overhead, four empty handlers (moxy+noop against moxy): "
                         f"{noop['ir_per_req'] - plain['ir_per_req']:+,.0f} Ir/request, "
                         f"{(noop['ir_per_req'] / plain['ir_per_req'] - 1) * 100:+.1f}%.")
            for c in cg:
                if "error" in c:
                    L.append(f"\n- callgrind {c['name']} failed: " + c["error"].replace("\n", "\n  "))
        L.append(f"\n_Run took {elapsed:.0f}s._\n")
        return "\n".join(L)


def master_rss(results):
    for r in results:
        if r.get("master_rss_kib"):
            return f"{r['master_rss_kib'] / 1024:.1f} MiB"
    return "a few MiB"


def versions():
    out = []
    for argv, pat in ((["nginx", "-v"], r"nginx/(\S+)"), (["haproxy", "-v"], r"version (\S+)"),
                      (["wrk", "-v"], r"wrk (\S+)")):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            m = re.search(pat, p.stdout + p.stderr)
            out.append(f"{argv[0]} {m.group(1) if m else '?'}")
        except OSError:
            out.append(f"{argv[0]} missing")
    return ", ".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--moxy", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * (env_int("BENCH_IDLE_CONNS", 10000) + 2048) + 1024
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    for tool in ("nginx", "haproxy", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found (run scripts/deps.sh)")
    b = Bench(args)
    # SIGTERM (e.g. from a CI timeout) unwinds through the finally below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return b.run()
    finally:
        b.procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
