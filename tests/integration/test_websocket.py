"""WebSocket upgrade through moxy: 101 handshake, echoed frames, close."""
import base64
import os
import unittest

from harness import Client, MoxyTestCase, pattern, simple_config, ws_accept, ws_frame, ws_read


class WebSocket(MoxyTestCase):
    @classmethod
    def setup_class(cls):
        cls.origin = cls.class_origin()
        cls.moxy = cls.class_moxy(simple_config(cls.origin.port))

    def handshake(self, c):
        key = base64.b64encode(os.urandom(16)).decode()
        r = c.request("GET", "/ws", [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                     ("Sec-WebSocket-Key", key), ("Sec-WebSocket-Version", "13")])
        self.assert_status(r, 101)
        self.assertEqual(r.header("sec-websocket-accept"), ws_accept(key))
        self.assertEqual(r.header("upgrade", "").lower(), "websocket")

    def test_echo_three_messages_then_close(self):
        with Client(self.moxy.port) as c:
            self.handshake(c)
            for opcode, msg in ((1, b"hello"), (1, "\u00e9t\u00e9 " .encode() * 50), (2, pattern(70000))):
                c.send(ws_frame(opcode, msg))
                fin, op, payload, masked = ws_read(c.reader)
                self.assertEqual((fin, op, masked), (True, opcode, False))
                self.assertEqual(payload, msg)
            c.send(ws_frame(8, b"\x03\xe8bye"))
            self.assertEqual(ws_read(c.reader)[1:3], (8, b"\x03\xe8bye"))
            self.assert_closed(c, "after the websocket close handshake")

    def test_ping_and_split_writes(self):
        with Client(self.moxy.port) as c:
            self.handshake(c)
            c.send(ws_frame(9, b"p"))
            self.assertEqual(ws_read(c.reader)[1:3], (10, b"p"))
            frame = ws_frame(1, b"x" * 1000)
            for i in range(0, len(frame), 100):    # a frame split across many TCP writes
                c.send(frame[i:i + 100])
            self.assertEqual(ws_read(c.reader)[2], b"x" * 1000)


if __name__ == "__main__":
    unittest.main()
