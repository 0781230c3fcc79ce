"""Adversarial review of the request path (h1_server.c, session.c, upconn.c,
wstream.c, vm.c). Each test reproduces one bug found by reading the code; see
its docstring for the mechanism."""
import os
import socket
import struct
import tempfile
import threading
import time

from harness import (SLOW, Client, MoxyTestCase, build_request, config, free_port, pattern,
                     request, simple_config,
                     service, sha, upstream)


class RawOrigin:
    """An origin whose every connection runs handler(conn) in a thread."""

    def __init__(self, handler):
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.conns = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        conn.settimeout(10)
        try:
            self.handler(conn)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def stop(self):
        self.stopping = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def read_head(conn):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = conn.recv(65536)
        if not d:
            raise EOFError
        buf += d
    return buf


class Review(MoxyTestCase):
    def raw_origin(self, handler):
        o = RawOrigin(handler)
        self.addCleanup(o.stop)
        return o

    def moxy_for(self, port, upstream_opts=None, **svc):
        listen = free_port()
        return self.start_moxy(config([service("web", listen, **svc)],
                                      {"origin": upstream(port, **(upstream_opts or {}))}))

    def test_close_delimited_upstream_response_is_truncated(self):
        """An origin answering without Content-Length or chunked framing
        delimits the body by closing (RFC 9112 6.3 item 8). upconn.c on_read
        (line ~275) ends such a response with llhttp_finish(), which calls
        on_message_complete; that callback returns HPE_PAUSED, so
        llhttp_finish() returns HPE_PAUSED (not HPE_OK) and the response is
        treated as MX_EUPCLOSED: the HTTP/1.1 client gets a chunked body with
        no last chunk and the connection is cut; every close-delimited
        response through moxy is reported as an upstream error."""
        def handler(conn):
            read_head(conn)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello, world")
            conn.shutdown(socket.SHUT_WR)
            time.sleep(0.2)
        o = self.raw_origin(handler)
        m = self.moxy_for(o.port)
        with Client(m.port) as c:
            c.send(build_request("GET", "/eof"))
            r = c.response(partial_ok=True)
        self.assert_status(r, 200, m)
        self.assertTrue(r.complete, f"body cut short: {r.body!r}\n{m.diagnostics()}")
        self.assertEqual(r.body, b"hello, world")

    def test_response_filter_error_frees_session_inside_parser(self):
        """A response_filter that raises makes mx_session_on_response_head()
        call mx_session_respond_error() from inside the upstream parser's
        on_headers_complete. respond_error -> finish -> mx_h1_session_done ->
        finish_session frees the session at once (the downstream connection is
        not in_process during an upstream read), and upconn.c
        on_headers_complete then reads s->status (line ~482): heap use after
        free."""
        d = tempfile.mkdtemp(prefix="moxy-review-")
        path = os.path.join(d, "rf.lua")
        with open(path, "w") as f:
            f.write("local app = {}\n"
                    "function app.response_filter(s, ctx)\n"
                    "    if s.req:path() == '/boom' then error('boom') end\n"
                    "end\n"
                    "return app\n")
        origin = self.start_origin()
        m = self.moxy_for(origin.port, script=path)
        with Client(m.port) as c:
            r = c.request("GET", "/boom")
        self.assert_status(r, 500, m)
        time.sleep(0.2)
        self.assertEqual(m.sanitizer_lines(), [], m.diagnostics())

    def test_tunnel_upstream_write_error_frees_session(self):
        """After a 101, mx_h1_tunnel() hands the bytes the client sent behind
        its Upgrade request to mx_session_tunnel_down(), which writes them up.
        If the origin has already reset the connection, the write fails at
        once: mx_upconn_write -> mx_session_on_upstream_error ->
        respond_error -> finish -> finish_session frees the session (we are in
        the upstream read callback, not in conn_process), and
        tunnel_down then reads s->u (session.c line ~720): use after free."""
        def handler(conn):
            read_head(conn)
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\n\r\n")
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()                     # RST right behind the 101
        o = self.raw_origin(handler)
        m = self.moxy_for(o.port)
        for _ in range(5):
            with Client(m.port) as c:
                c.send(build_request("GET", "/ws", [("Upgrade", "websocket"),
                                                    ("Connection", "Upgrade")]) + b"early bytes")
                c.wait_closed(2 * SLOW)
            if m.sanitizer_lines() or not m.alive():
                break
        time.sleep(0.2)
        self.assertTrue(m.alive(), m.diagnostics())
        self.assertEqual(m.sanitizer_lines(), [], m.diagnostics())

    def test_pipelined_requests_then_half_close_all_answered(self):
        """A client sends two pipelined requests and then shuts down its
        write side (it has nothing more to send). h1_server.c on_read sets
        close_after when EOF arrives while the first request is in flight, so
        finish_session() closes the connection after the first response: the
        second request, already received and complete in rbuf, is silently
        dropped."""
        origin = self.start_origin()
        m = self.moxy_for(origin.port)
        with Client(m.port) as c:
            c.send(build_request("GET", "/slow?ms=300") + build_request("GET", "/echo?second"))
            c.sock.shutdown(socket.SHUT_WR)
            r1 = c.response()
            self.assert_status(r1, 200, m)
            try:
                r2 = c.response()
            except (EOFError, ConnectionResetError):
                self.fail("the second pipelined request got no answer after the client half-closed")
            self.assert_status(r2, 200, m)

    def test_slow_reading_client_cut_by_upstream_read_timeout(self):
        """upconn.c arms read_timeout (TM_READ) when the response starts and
        re-arms it only when bytes arrive from the origin. When the client
        reads slowly, mx_session_on_response_body() pauses the upstream read
        (backpressure), so no bytes arrive and the timer fires after
        read_timeout although the origin is not slow at all: the download is
        cut short (on_timeout -> on_upstream_error -> respond_error with the
        head sent -> close)."""
        origin = self.start_origin()
        m = self.moxy_for(origin.port, upstream_opts={"read_timeout": 1})
        n = 16 * 1024 * 1024
        with Client(m.port, timeout=10 * SLOW) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            c.send(build_request("GET", f"/bytes?n={n}"))
            time.sleep(2.5)                  # the client is busy; moxy must wait
            r = c.response(partial_ok=True)
        self.assert_status(r, 200, m)
        self.assertTrue(r.complete and len(r.body) == n,
                        f"download cut after {len(r.body)} of {n} bytes\n{m.diagnostics()}")
        self.assertEqual(sha(r.body), sha(pattern(n)))

    def test_expect_continue_with_lua_body_read_hangs(self):
        """moxy hides Expect from the origin and answers 100-continue itself,
        but only in after_upstream_request_filter(), i.e. after every request
        phase. A request_filter that reads the body (s.req:body(), which
        yields with body_waiting and only resumes reading, api.c
        moxy_req_body) waits for bytes the client will not send before it
        sees 100 Continue: both wait until client_body_timeout, and the
        request fails with 408 instead of being served."""
        d = tempfile.mkdtemp(prefix="moxy-review-")
        path = os.path.join(d, "body.lua")
        with open(path, "w") as f:
            f.write("local app = {}\n"
                    "function app.request_filter(s, ctx)\n"
                    "    local body = s.req:body()\n"
                    "    return s:respond(200, 'got ' .. #body .. '\\n')\n"
                    "end\n"
                    "return app\n")
        origin = self.start_origin()
        m = self.moxy_for(origin.port, script=path)
        with Client(m.port, timeout=2 * SLOW) as c:
            c.send(build_request("POST", "/upload", [("Expect", "100-continue"),
                                                     ("Content-Length", "5")]))
            try:
                first = c.response(interim=True)
            except socket.timeout:
                self.fail("no 100 Continue (nor a final answer): the client and the "
                          "request_filter wait for each other")
            if first.status == 100:
                c.send(b"hello")
                first = c.response()
            self.assert_status(first, 200, m)
            self.assertEqual(first.body, b"got 5\n")


if __name__ == "__main__":
    import unittest
    unittest.main()


class SendTimeout(MoxyTestCase):
    def test_a_client_that_stops_reading_is_closed_after_send_timeout(self):
        """Review, risk 1: nothing bounded a client that never reads its response, so
        the connection and its queued bytes stayed forever. timeouts.send closes it."""
        o = self.start_origin()
        m = self.start_moxy(simple_config(o.port, service_opts={"timeouts": {"send": 1}}))
        with Client(m.port) as c:
            c.send(b"GET /bytes?n=30000000 HTTP/1.1\r\nHost: a\r\n\r\n")
            time.sleep(3.5)                     # read nothing for longer than send: 1
            got = 0
            c.sock.settimeout(5)
            try:
                while True:
                    data = c.sock.recv(1 << 20)
                    if not data:
                        break
                    got += len(data)
            except (ConnectionResetError, socket.timeout):
                pass
        self.assertLess(got, 30000000, "the whole response arrived: nothing timed out")
        self.assertIn("send_timeout", m.error_log())
        self.assert_status(request(m.port, "GET", "/echo?after"), 200, m)
