#!/usr/bin/env python3
"""One long-lived TLS connection driven line by line, for the tenant
policy tests: several requests over the same HTTP/1.1 keep-alive or HTTP/2
connection, with the test changing things on the server in between.

The Rust test's own client closes after every request; keep-alive reuse,
HTTP/2 connection reuse across names and "the record changed while the
connection was open" need one connection that outlives a request. The
server certificate is not verified: the tests compare what they got.

Usage:
    conn.py --check
        exit 0 when h2 and cryptography can be imported (prints its version)
    conn.py --port PORT [--sni NAME] [--http2] [--host 127.0.0.1]
        connects, prints "connected <alpn> <leaf serial hex>", then reads
        commands from stdin, one per line:
            GET <authority> <path>   one request on the same connection;
                                     prints "response <status> <body hex>"
            QUIT                     closes and exits 0
        Any failure prints "error <what>" and exits 1. Lines, so the Rust
        test needs no JSON parser.
"""

import argparse
import socket
import ssl
import sys


def check():
    try:
        import cryptography  # noqa: F401 (reads the server's certificate)
        import h2
    except ImportError as e:
        print(f"h2 or cryptography is not importable: {e}", file=sys.stderr)
        return 1
    print(h2.__version__)
    return 0


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Http1:
    def __init__(self, tls):
        self.tls = tls
        self.buf = b""

    def _fill(self):
        data = self.tls.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        self.buf += data

    def get(self, authority, path):
        req = (
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\n"
            "Connection: keep-alive\r\n\r\n"
        )
        self.tls.sendall(req.encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            if name.strip().lower() == "transfer-encoding":
                raise ValueError("chunked responses are not supported")
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, body


class Http2:
    def __init__(self, tls):
        import h2.config
        import h2.connection

        self.tls = tls
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True)
        )
        self.conn.initiate_connection()
        self.tls.sendall(self.conn.data_to_send())

    def get(self, authority, path):
        import h2.events

        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", authority),
                (":path", path),
            ],
            end_stream=True,
        )
        self.tls.sendall(self.conn.data_to_send())
        status, body = None, b""
        while True:
            data = self.tls.recv(65536)
            if not data:
                raise ConnectionError("connection closed by the server")
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                    body += event.data
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, sid
                    )
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                    self.tls.sendall(self.conn.data_to_send())
                    return status, body
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                    raise ConnectionError(f"stream reset: {event.error_code}")
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise ConnectionError(f"GOAWAY: {event.error_code}")
            self.tls.sendall(self.conn.data_to_send())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--check", action="store_true")
    p.add_argument("--port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--sni")
    p.add_argument("--http2", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0)
    a = p.parse_args()
    if a.check:
        return check()
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"] if a.http2 else ["http/1.1"])
        sock = socket.create_connection((a.host, a.port), timeout=a.timeout)
        tls = ctx.wrap_socket(sock, server_hostname=a.sni)
        alpn = tls.selected_alpn_protocol() or "-"
        if a.http2 and alpn != "h2":
            say(f"error server chose ALPN {alpn}, not h2")
            return 1
        from cryptography import x509

        leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        say(f"connected {alpn} {leaf.serial_number:x}")
        client = Http2(tls) if a.http2 else Http1(tls)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "QUIT":
                return 0
            if words[0] == "GET" and len(words) == 3:
                status, body = client.get(words[1], words[2])
                say(f"response {status} {body.hex() or '-'}")
                continue
            say(f"error unknown command {line.strip()!r}")
            return 1
        return 0
    except Exception as e:  # report every failure as one line
        say(f"error {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
