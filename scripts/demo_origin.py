#!/usr/bin/env python3
"""The demo origin `make run` puts behind moxy: a page, an echo of what the
origin received (so the forwarding headers show), and a streamed response."""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = b"""<!doctype html><title>moxy demo</title>
<h1>Hello through moxy</h1>
<p>This page came from the demo origin on 127.0.0.1:9001, proxied by moxy.
Try <a href="/echo">/echo</a> to see the request as the origin got it.</p>
"""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def _send(self, status, body, ctype):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _echo(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        out = {"method": self.command, "target": self.path,
               "headers": [[k, v] for k, v in self.headers.items()],
               "body_bytes": len(body)}
        self._send(200, (json.dumps(out, indent=2) + "\n").encode(), "application/json")

    def do_GET(self):
        if self.path.startswith("/echo"):
            return self._echo()
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                line = f"chunk {i} at {time.strftime('%H:%M:%S')}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")
            return
        self._send(200, PAGE, "text/html")

    do_HEAD = do_GET
    do_POST = do_PUT = do_DELETE = _echo


if __name__ == "__main__":
    host, port = sys.argv[1], int(sys.argv[2])
    ThreadingHTTPServer((host, port), Handler).serve_forever()
