"""Shared harness for moxy's integration tests (Python 3.11 stdlib only).

- Moxy: runs the binary ($MOXY_BIN, default build/moxy) with an inline YAML
  config in a temp dir, captures stderr, stops it by PID.
- Origin: a threaded raw-socket HTTP/1.1 origin whose behaviour is chosen by
  path (/echo, /bytes, /chunked, /slow, /ws, ...).
- Client: a raw HTTP/1.1 client (keeps header case and order), plus curl().
- MoxyTestCase: unittest base class that owns every process it starts.
Every socket operation has a timeout; every process is stopped by PID.
"""
import base64
import hashlib
import http
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from functools import lru_cache
from urllib.parse import parse_qs, urlsplit

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ASAN = os.environ.get("MOXY_ASAN") == "1"
SLOW = 3.0 if ASAN else 1.0            # sanitizer builds get longer bounds
TIMEOUT = 3.0 * SLOW                   # default per-socket-operation timeout
SANITIZER_MARKERS = ("AddressSanitizer", "runtime error:", "LeakSanitizer")
MiB = 1 << 20


class ProtocolError(Exception):
    pass


class MoxyError(Exception):
    pass


# ---------------------------------------------------------------- utilities

def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (kernel-chosen)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@lru_cache(maxsize=16)
def pattern(n):
    """n deterministic pseudo-random bytes (the same for a given n)."""
    return random.Random(0x5EED ^ n).randbytes(n)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def chunk_encode(data, size=8192):
    out = bytearray()
    for i in range(0, len(data), size):
        part = data[i:i + size]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


def wait_for(pred, timeout, step=0.05):
    """Polls pred() until it is truthy or timeout passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def port_open(port, timeout=0.5):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
        return True
    except OSError:
        return False


def pid_alive(pid):
    """True if pid exists and is not a zombie (a daemon reparented to a
    non-reaping PID 1 stays a zombie after it exits)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# ------------------------------------------------------------ YAML configs

def _scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)            # flow style; JSON is valid YAML
    return json.dumps(str(v))


def to_yaml(obj, indent=0):
    """Block-style YAML for dicts/lists of dicts; scalar lists in flow style."""
    pad = " " * indent
    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict) and v or isinstance(v, list) and any(isinstance(x, dict) for x in v):
                lines += [f"{pad}{k}:", to_yaml(v, indent + 2)]
            else:
                lines.append(f"{pad}{k}: {_scalar(v)}")
    else:
        for v in obj:
            if isinstance(v, dict):
                sub = to_yaml(v, indent + 2).split("\n")
                lines += [pad + "- " + sub[0].lstrip()] + sub[1:]
            else:
                lines.append(f"{pad}- {_scalar(v)}")
    return "\n".join(lines)


def upstream(port, **kw):
    return {"backends": [f"127.0.0.1:{port}"], "connect_timeout": 1, "read_timeout": 5, **kw}


def service(name, port, upstream_name="origin", **kw):
    return {"name": name, "listeners": [f"127.0.0.1:{port}"], "upstream": upstream_name, **kw}


def config(services, upstreams, **top):
    """A full moxy config; '{tmp}' in any string becomes the Moxy temp dir."""
    doc = {"version": 1, "threads": 1, **top, "upstreams": upstreams, "services": services}
    return to_yaml(doc) + "\n"


def simple_config(origin_port, listen_port=None, upstream_opts=None, service_opts=None, **top):
    """One service 'web' on a free port proxying to one origin."""
    return config([service("web", listen_port or free_port(), **(service_opts or {}))],
                  {"origin": upstream(origin_port, **(upstream_opts or {}))}, **top)


# -------------------------------------------------------------- moxy binary

def moxy_bin():
    b = os.environ.get("MOXY_BIN", "build/moxy")
    if os.path.isabs(b):
        return b
    return os.path.abspath(b) if os.path.exists(b) else os.path.join(REPO, b)


def moxy_env():
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return env


def run_moxy(args, timeout=5 * SLOW):
    """Runs the binary to completion (e.g. -t, -V, -h); killed if it overruns."""
    b = moxy_bin()
    if not os.access(b, os.X_OK):
        raise MoxyError(f"moxy binary not found or not executable: {b} (set MOXY_BIN)")
    return subprocess.run([b, *args], capture_output=True, text=True, errors="replace",
                          stdin=subprocess.DEVNULL, timeout=timeout, cwd=REPO, env=moxy_env())


def tail(text, n=40):
    return "\n".join(text.splitlines()[-n:])


class Moxy:
    """moxy running in the foreground with a generated config.

    The config text may use '{tmp}' for the instance's temp dir; error_log
    defaults to {tmp}/error.log. .port is the first listener after 'services:'.
    """

    def __init__(self, conf, start=True, args=()):
        self.dir = tempfile.mkdtemp(prefix="moxy-it-")
        self.error_log_path = self.path("error.log")
        self.stderr_path = self.path("stderr.log")
        self.config_path = self.path("moxy.yaml")
        self.args = list(args)
        self.proc = None
        self._files = []
        text = conf.replace("{tmp}", self.dir)
        if not re.search(r"(?m)^error_log\s*:", text):
            text = f"error_log: {json.dumps(self.error_log_path)}\n" + text
        # MOXY_IO_URING=0 runs the suite on libuv's reads (epoll): make test does
        # both. Appended, so that the lines a config error names stay put.
        if os.environ.get("MOXY_IO_URING") == "0" and not re.search(r"(?m)^io_uring\s*:", text):
            text = text.rstrip("\n") + "\nio_uring: false\n"
        with open(self.config_path, "w") as f:
            f.write(text)
        self.config_text = text
        m = re.search(r"(?ms)^services:.*?127\.0\.0\.1:(\d+)", text)
        self.port = int(m.group(1)) if m else None
        if start:
            try:
                self.start()
            except Exception:
                self.cleanup()
                raise

    def path(self, name):
        return os.path.join(self.dir, name)

    def start(self, timeout=5 * SLOW):
        b = moxy_bin()
        if not os.access(b, os.X_OK):
            raise MoxyError(f"moxy binary not found or not executable: {b} (set MOXY_BIN)")
        err = open(self.stderr_path, "ab")
        out = open(self.path("stdout.log"), "ab")
        self._files += [err, out]
        self.proc = subprocess.Popen([b, "-c", self.config_path, *self.args], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=err, cwd=REPO, env=moxy_env())
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise MoxyError(f"moxy exited with {self.proc.returncode} before listening\n{self.diagnostics()}")
            if self.port is None or port_open(self.port, 0.2):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise MoxyError(f"moxy did not accept on 127.0.0.1:{self.port} within {timeout}s\n"
                                f"{self.diagnostics()}")
            time.sleep(0.05)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def returncode(self):
        return self.proc.poll() if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout):
        """Exit code, or None if still running after timeout."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL after timeout. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait_exit(timeout) is None:
                self.proc.kill()
                self.wait_exit(5)
        for f in self._files:
            f.close()
        self._files = []
        return self.proc.returncode

    def cleanup(self):
        self.stop()
        if not os.environ.get("MOXY_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def read(self, name_or_path):
        try:
            with open(os.path.join(self.dir, name_or_path), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def error_log(self):
        return self.read(self.error_log_path)

    def stderr(self):
        return self.read(self.stderr_path)

    def log_size(self):
        try:
            return os.path.getsize(self.error_log_path)
        except OSError:
            return 0

    def wait_log(self, needle, since=0, timeout=2 * SLOW):
        """True once the error log, after byte offset since, contains needle."""
        return bool(wait_for(lambda: needle in self.error_log()[since:], timeout))

    def sanitizer_lines(self):
        text = self.stderr() + "\n" + self.error_log()
        return [l for l in text.splitlines() if any(m in l for m in SANITIZER_MARKERS)]

    def diagnostics(self, n=30):
        return (f"--- moxy error log tail ({self.error_log_path}) ---\n{tail(self.error_log(), n)}\n"
                f"--- moxy stderr tail ---\n{tail(self.stderr(), n)}")


def assert_status(resp, code, moxy=None, msg=""):
    """Asserts resp.status is code (or one of a tuple of codes); on mismatch
    shows the response and, when given, moxy's error log and stderr."""
    codes = code if isinstance(code, (tuple, list, set)) else (code,)
    if resp.status in codes:
        return
    text = f"expected status {'/'.join(map(str, codes))}, got {resp.status} {resp.reason!r}"
    text += f"\nheaders: {resp.headers}\nbody: {resp.body[:300]!r}"
    if moxy is not None:
        text += "\n" + moxy.diagnostics()
    raise AssertionError(f"{msg}\n{text}" if msg else text)


# ----------------------------------------------------------- wire protocol

class Reader:
    """Buffered reads on a socket; EOFError when the peer closes."""

    def __init__(self, sock, on_bytes=None):
        self.sock, self.on_bytes, self.buf = sock, on_bytes, bytearray()

    def fill(self):
        data = self.sock.recv(262144)
        if not data:
            raise EOFError("connection closed by peer")
        if self.on_bytes:
            self.on_bytes(len(data))
        self.buf += data

    def read_until(self, delim, limit=1 << 20):
        while True:
            i = self.buf.find(delim)
            if i >= 0:
                out = bytes(self.buf[:i + len(delim)])
                del self.buf[:i + len(delim)]
                return out
            if len(self.buf) > limit:
                raise ProtocolError(f"no {delim!r} within {limit} bytes")
            self.fill()

    def read_exact(self, n):
        out = bytearray()
        self.read_into(n, out.extend)
        return bytes(out)

    def read_into(self, n, sink, piece=1 << 20):
        """Passes exactly n bytes to sink in pieces (partial ones before an EOFError)."""
        while n > 0:
            if not self.buf:
                self.fill()
            k = min(n, len(self.buf), piece)
            sink(bytes(self.buf[:k]))
            del self.buf[:k]
            n -= k

    def read_to_eof(self, sink):
        while True:
            if self.buf:
                sink(bytes(self.buf))
                self.buf.clear()
            try:
                self.fill()
            except (EOFError, ConnectionResetError):
                return


HEX = set(b"0123456789abcdefABCDEF")


def read_chunked(reader, sink):
    """Strict chunked decoding; returns the trailer fields."""
    while True:
        line = reader.read_until(b"\r\n", 4096)[:-2]
        size = line.split(b";", 1)[0]
        if not size or not set(size) <= HEX:
            raise ProtocolError(f"bad chunk size line {line!r}")
        n = int(size, 16)
        if n == 0:
            break
        reader.read_into(n, sink)
        if reader.read_exact(2) != b"\r\n":
            raise ProtocolError("chunk data not followed by CRLF")
    trailers = []
    while True:
        line = reader.read_until(b"\r\n", 65536)[:-2]
        if not line:
            return trailers
        trailers.append(parse_field(line))


def parse_field(line):
    name, sep, value = line.partition(b":")
    if not sep or not name or name.strip(b" \t") != name or b" " in name or b"\r" in line or b"\0" in line:
        raise ProtocolError(f"bad header line {line!r}")
    return name.decode("latin-1"), value.strip(b" \t").decode("latin-1")


def parse_head(head):
    """(start line parts, [(name, value)...]) of a header section ending in CRLFCRLF."""
    lines = head[:-4].split(b"\r\n")
    return lines[0].decode("latin-1").split(" "), [parse_field(l) for l in lines[1:]]


def header(headers, name, default=None):
    name = name.lower()
    return next((v for n, v in headers if n.lower() == name), default)


def header_all(headers, name):
    name = name.lower()
    return [v for n, v in headers if n.lower() == name]


def tokens(value):
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


class Response:
    def __init__(self, version, status, reason, headers):
        self.version, self.status, self.reason, self.headers = version, status, reason, headers
        self.body, self.complete, self.chunked, self.trailers, self.interim = b"", True, False, [], []

    def header(self, name, default=None):
        return header(self.headers, name, default)

    def header_all(self, name):
        return header_all(self.headers, name)

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.reason} {len(self.body)}B>"


def read_response(reader, method="GET", partial_ok=False):
    """One response; with partial_ok a body cut short by EOF sets .complete=False."""
    start, headers = parse_head(reader.read_until(b"\r\n\r\n"))
    if len(start) < 2 or not start[0].startswith("HTTP/") or not start[1].isdigit():
        raise ProtocolError(f"bad status line {' '.join(start)!r}")
    resp = Response(start[0], int(start[1]), " ".join(start[2:]), headers)
    if resp.status < 200 or resp.status in (204, 304) or method == "HEAD":
        return resp
    body = bytearray()
    try:
        if "chunked" in tokens(resp.header("transfer-encoding")):
            resp.chunked = True
            resp.trailers = read_chunked(reader, body.extend)
        elif resp.header("content-length") is not None:
            reader.read_into(int(resp.header("content-length")), body.extend)
        else:
            reader.read_to_eof(body.extend)
    except (EOFError, ConnectionResetError):
        if not partial_ok:
            raise
        resp.complete = False
    resp.body = bytes(body)
    return resp


def build_request(method, target, headers=(), body=None, chunked=False, version="HTTP/1.1",
                  host="moxy.test", chunk_size=8192):
    """Request bytes. Host is added first unless given; body adds Content-Length
    (or chunked framing) unless the caller set that header."""
    hs = list(headers)
    names = {n.lower() for n, _ in hs}
    if host is not None and "host" not in names:
        hs.insert(0, ("Host", host))
    payload = b""
    if body is not None:
        if chunked:
            if "transfer-encoding" not in names:
                hs.append(("Transfer-Encoding", "chunked"))
            payload = chunk_encode(body, chunk_size)
        else:
            if "content-length" not in names:
                hs.append(("Content-Length", str(len(body))))
            payload = body
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in hs) + "\r\n"
    return head.encode("latin-1") + payload


class Client:
    """One raw HTTP/1.1 client connection to 127.0.0.1:port."""

    def __init__(self, port, timeout=TIMEOUT):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        self.reader = Reader(self.sock)

    def send(self, data):
        self.sock.sendall(data)

    def response(self, method="GET", partial_ok=False, interim=False):
        """Next response; 1xx (but 101) are collected in .interim unless interim=True."""
        seen = []
        while True:
            resp = read_response(self.reader, method, partial_ok)
            if interim or not 100 <= resp.status < 200 or resp.status == 101:
                resp.interim = seen
                return resp
            seen.append(resp)

    def request(self, method, target, headers=(), body=None, chunked=False, **kw):
        self.send(build_request(method, target, headers, body, chunked, **kw))
        return self.response(method)

    def wait_closed(self, timeout=3 * SLOW):
        """(closed, extra): reads until the peer closes (EOF or RST) or timeout;
        extra holds any bytes that arrived meanwhile."""
        extra = bytearray(self.reader.buf)
        self.reader.buf.clear()
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                data = self.sock.recv(65536)
                if not data:
                    return True, bytes(extra)
                extra += data
        except (ConnectionResetError, BrokenPipeError):
            return True, bytes(extra)
        except socket.timeout:
            pass
        return False, bytes(extra)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def request(port, method, target, headers=(), body=None, chunked=False, timeout=TIMEOUT, **kw):
    """One request on a fresh connection."""
    with Client(port, timeout) as c:
        return c.request(method, target, headers, body, chunked, **kw)


class CurlResult:
    def __init__(self, status, headers, body, rc, stderr):
        self.status, self.headers, self.body, self.rc, self.stderr = status, headers, body, rc, stderr

    def header(self, name, default=None):
        return header(self.headers, name, default)


def curl(url, *args, method=None, headers=(), data_file=None, max_time=10 * SLOW):
    """curl as a subprocess (never through an env proxy); final response only."""
    with tempfile.TemporaryDirectory(prefix="moxy-curl-") as d:
        hfile, bfile = os.path.join(d, "h"), os.path.join(d, "b")
        cmd = ["curl", "-sS", "--noproxy", "*", "--max-time", str(max_time),
               "-D", hfile, "-o", bfile, "-w", "%{http_code}"]
        if method:
            cmd += ["-X", method]
        for h in headers:
            cmd += ["-H", h]
        if data_file:
            cmd += ["--data-binary", "@" + data_file]
        p = subprocess.run(cmd + list(args) + [url], capture_output=True, timeout=max_time + 5)
        body = open(bfile, "rb").read() if os.path.exists(bfile) else b""
        raw = open(hfile, "rb").read() if os.path.exists(hfile) else b""
    blocks = [b for b in raw.split(b"\r\n\r\n") if b.strip()]
    hs = [parse_field(l) for l in blocks[-1].split(b"\r\n")[1:]] if blocks else []
    status = int(p.stdout.strip() or 0) if p.stdout.strip().isdigit() else 0
    return CurlResult(status, hs, body, p.returncode, p.stderr.decode("utf-8", "replace"))


# -------------------------------------------------------------- websocket

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def ws_xor(data, key):
    k = (key * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(len(data), "big")


def ws_frame(opcode, payload, mask=True, fin=True):
    n = len(payload)
    m = 0x80 if mask else 0
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    if mask:
        key = os.urandom(4)
        return head + key + ws_xor(payload, key)
    return head + payload


def ws_read(reader):
    """(fin, opcode, payload, masked) of the next frame."""
    b0, b1 = reader.read_exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(reader.read_exact(2), "big")
    elif n == 127:
        n = int.from_bytes(reader.read_exact(8), "big")
    key = reader.read_exact(4) if b1 & 0x80 else None
    payload = reader.read_exact(n)
    return bool(b0 & 0x80), b0 & 0x0F, ws_xor(payload, key) if key else payload, key is not None


# ------------------------------------------------------------------ origin

REASONS = {s.value: s.phrase for s in http.HTTPStatus}


def response_bytes(status, headers=(), body=b"", head_only=False, keep=True):
    hs = list(headers)
    names = {n.lower() for n, _ in hs}
    if "content-length" not in names and "transfer-encoding" not in names and status >= 200 \
            and status not in (204, 304):
        hs.append(("Content-Length", str(len(body))))
    if not keep:
        hs.append(("Connection", "close"))
    out = f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
    out += "".join(f"{n}: {v}\r\n" for n, v in hs) + "\r\n"
    return out.encode("latin-1") + (b"" if head_only else body)


class Origin:
    """Threaded HTTP/1.1 origin on 127.0.0.1:<free port>.

    .connections  accepted TCP connections
    .requests     one record per complete request (dict: method, target,
                  version, headers, body_len, body_sha256, chunked, path, body
                  (first 64 KiB))
    .bytes_received, .errors (protocol errors seen, as strings)
    """

    IDLE_TIMEOUT = 30

    def __init__(self, unix_path=None):
        self.unix_path = unix_path
        self.lock = threading.Lock()
        self.connections = 0
        self.bytes_received = 0
        self.requests = []
        self.errors = []
        self._conns = set()
        self._threads = []
        self._stopping = False
        self.sock = None
        self.port = None

    def start(self):
        if self.unix_path:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.bind(self.unix_path)
        else:
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
        self.sock.listen(256)
        self.sock.settimeout(0.2)
        t = threading.Thread(target=self._accept_loop, name=f"origin-{self.port}", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        self._stopping = True
        if self.sock:
            self.sock.close()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + 2
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    @property
    def request_count(self):
        return len(self.requests)

    def targets(self):
        return [r["target"] for r in self.requests]

    def _count(self, n):
        with self.lock:
            self.bytes_received += n

    def _accept_loop(self):
        while not self._stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self._conns.add(conn)
                self._threads = [t for t in self._threads if t.is_alive()]
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn):
        conn.settimeout(self.IDLE_TIMEOUT)
        if not self.unix_path:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = Reader(conn, self._count)
        reader.drop_next = False
        try:
            while not self._stopping:
                try:
                    head = reader.read_until(b"\r\n\r\n", 1 << 20)
                except EOFError:
                    if reader.buf:
                        raise ProtocolError(f"connection closed inside a header section {bytes(reader.buf[:80])!r}")
                    return
                if not self._handle(conn, reader, head):
                    return
        except ProtocolError as e:
            with self.lock:
                self.errors.append(str(e))
        except (OSError, EOFError, ValueError):
            pass
        finally:
            with self.lock:
                self._conns.discard(conn)
            conn.close()

    def _read_body(self, reader, headers):
        """(length, sha256, chunked, first 64 KiB) of the request body."""
        h, state = hashlib.sha256(), {"n": 0, "keep": bytearray()}

        def sink(data):
            h.update(data)
            state["n"] += len(data)
            if len(state["keep"]) < 65536:
                state["keep"] += data[:65536 - len(state["keep"])]

        te, cls = header_all(headers, "transfer-encoding"), header_all(headers, "content-length")
        if te:
            if cls or tokens(",".join(te)) != {"chunked"}:
                raise ProtocolError(f"bad framing: TE {te} CL {cls}")
            read_chunked(reader, sink)
        elif cls:
            if len(cls) != 1 or not cls[0].isdigit():
                raise ProtocolError(f"bad Content-Length {cls}")
            reader.read_into(int(cls[0]), sink)
        return state["n"], h.hexdigest(), bool(te), bytes(state["keep"])

    def _handle(self, conn, reader, head):
        start, headers = parse_head(head)
        if len(start) != 3 or not start[2].startswith("HTTP/1."):
            raise ProtocolError(f"bad request line {start!r}")
        method, target, version = start
        url = urlsplit(target)
        path, q = url.path, {k: v[-1] for k, v in parse_qs(url.query).items()}
        conn_tokens = tokens(",".join(header_all(headers, "connection")))
        keep = "close" not in conn_tokens and (version == "HTTP/1.1" or "keep-alive" in conn_tokens)
        if (header(headers, "expect") or "").lower() == "100-continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        n, digest, chunked, body = self._read_body(reader, headers)
        rec = {"method": method, "target": target, "version": version, "headers": headers,
               "body_len": n, "body_sha256": digest, "chunked": chunked}
        with self.lock:
            self.requests.append(dict(rec, path=path, body=body))
        head_only = method == "HEAD"

        def send(status, hs=(), payload=b""):
            conn.sendall(response_bytes(status, hs, payload, head_only, keep))
            return keep

        if path == "/close-before-headers" or reader.drop_next:
            return False
        if path == "/drop-next":
            reader.drop_next = True     # the next request on this connection gets no answer
            return send(200, [("Content-Type", "text/plain")], b"ok")
        if path == "/trailers":
            body = b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
            conn.sendall(response_bytes(200, [("Transfer-Encoding", "chunked"), ("Trailer", "X-Checksum")],
                                        b"", head_only, keep) + (b"" if head_only else body))
            return keep
        if path == "/early-hints":
            conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            return send(200, [("Content-Type", "text/plain")], b"final")
        if path == "/ws":
            return self._websocket(conn, reader, headers)
        if path == "/slow":
            time.sleep(int(q.get("ms", "1000")) / 1000)
            return send(200, [("Content-Type", "text/plain")], b"slow")
        if path == "/bytes":
            return send(200, [("Content-Type", "application/octet-stream")], pattern(int(q.get("n", "0"))))
        if path == "/chunked":
            data, size = pattern(int(q.get("n", "0"))), int(q.get("size", "4096"))
            return send(200, [("Transfer-Encoding", "chunked")], chunk_encode(data, size))
        if path == "/close-mid-body":
            conn.sendall(response_bytes(200, [("Content-Length", "100000")], pattern(100000)[:50000], head_only))
            return False
        if path == "/bad-cl":
            return send(200, [("Content-Length", "5"), ("Content-Length", "6")], b"hello!")
        if path == "/headers":
            return send(200, [("Connection", "X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5"),
                              ("X-End", "1")], b"ok")
        if path == "/status":
            code = int(q.get("code", "200"))
            return send(code, [("Content-Type", "text/plain")], f"status {code}".encode())
        return send(200, [("Content-Type", "application/json")], json.dumps(rec).encode())

    def _websocket(self, conn, reader, headers):
        key = header(headers, "sec-websocket-key")
        if (header(headers, "upgrade") or "").lower() != "websocket" or not key:
            conn.sendall(response_bytes(400, body=b"not a websocket handshake", keep=False))
            return False
        conn.sendall(response_bytes(101, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                          ("Sec-WebSocket-Accept", ws_accept(key))]))
        while True:
            fin, opcode, payload, masked = ws_read(reader)
            if not masked:
                raise ProtocolError("unmasked client websocket frame")
            if opcode == 8:
                conn.sendall(ws_frame(8, payload, mask=False))
                return False
            conn.sendall(ws_frame(10 if opcode == 9 else opcode, payload, mask=False, fin=fin))


# --------------------------------------------------------------- test base

class MoxyTestCase(unittest.TestCase):
    """Base class: owns the origins and moxy processes its tests start.

    Subclasses may define setup_class() (classmethod) that sets e.g.
    cls.origin = cls.class_origin() and cls.moxy = cls.class_moxy(conf);
    tests start their own with self.start_origin() / self.start_moxy(conf).
    An error in setup_class there fails each test
    of the class with the reason (rather than one opaque class error).
    After every test, every moxy's stderr/error log is checked for sanitizer
    reports, and a class moxy that died during the test fails it.
    """

    _class_error = None
    _class_moxies = ()

    @classmethod
    def setUpClass(cls):
        cls._class_moxies = []
        cls._class_error = None
        try:
            cls.setup_class()
        except Exception as e:  # reported by every test of the class
            cls._class_error = f"{type(e).__name__}: {e}"

    @classmethod
    def setup_class(cls):
        pass

    @classmethod
    def class_origin(cls):
        o = Origin()
        cls.addClassCleanup(o.stop)
        return o.start()

    @classmethod
    def class_moxy(cls, conf, probe=True, **kw):
        """A moxy shared by the class. With probe, one GET /echo?probe must get
        some response, so a moxy that accepts but never answers fails the
        class at once instead of every test after a timeout."""
        m = Moxy(conf, start=False, **kw)
        cls.addClassCleanup(_finish_moxy, m)
        cls._class_moxies.append(m)
        m.start()
        if probe:
            try:
                request(m.port, "GET", "/echo?probe")
            except (OSError, EOFError, ProtocolError) as e:
                raise MoxyError(f"moxy does not answer GET /echo?probe: {type(e).__name__}: {e}\n"
                                f"{m.diagnostics()}") from None
        return m

    def start_origin(self):
        o = Origin()
        self.addCleanup(o.stop)
        return o.start()

    def start_moxy(self, conf, start=True, **kw):
        m = Moxy(conf, start=False, **kw)
        self.addCleanup(_finish_moxy, m)
        self._test_moxies.append(m)
        return m.start() if start else m

    def setUp(self):
        self._test_moxies = []
        if self._class_error:
            self.fail(f"class setup failed: {self._class_error}")
        for m in self._class_moxies:
            if not m.alive():
                self.fail(f"class moxy is not running (exit code {m.returncode})\n{m.diagnostics()}")

    def tearDown(self):
        for m in list(self._class_moxies) + self._test_moxies:
            bad = m.sanitizer_lines()
            if bad:
                self.fail("sanitizer report in moxy output:\n" + "\n".join(bad[:20]) + "\n" + m.diagnostics())
        for m in self._class_moxies:
            if not m.alive():
                self.fail(f"moxy died during this test (exit code {m.returncode})\n{m.diagnostics()}")

    def assert_status(self, resp, code, moxy=None, msg=""):
        assert_status(resp, code, moxy or (self._class_moxies[0] if self._class_moxies else None), msg)

    def assert_closed(self, client, msg=""):
        closed, extra = client.wait_closed()
        self.assertTrue(closed, f"connection still open {msg}")
        self.assertEqual(extra, b"", f"unexpected bytes after the response {msg}")


def _finish_moxy(m):
    """Stops m, removes its files, and raises if it printed a sanitizer report."""
    try:
        m.stop()
        bad = m.sanitizer_lines()
        if bad:
            raise AssertionError("sanitizer report in moxy output:\n" + "\n".join(bad[:20]) + "\n" + m.diagnostics())
    finally:
        m.cleanup()
