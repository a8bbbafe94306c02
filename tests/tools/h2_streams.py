#!/usr/bin/env python3
"""Many concurrent HTTP/2 streams over a few connections from one source
address, for the ACME challenge flood tests (tests/acme_h2_flood.rs):
HTTP/2 multiplexes requests, so one connection from one address holds as
many requests at once as the server allows streams (nginx: 128).

Usage:
    h2_streams.py --check
        exit 0 when h2 can be imported
    h2_streams.py --port PORT [--bind IP[,IP...]] [--tls --sni NAME]
                  [--connections N] [--streams S] --path TEMPLATE
                  [--for SECONDS] [--timeout SECONDS] [--cancel-after SECONDS]
        Opens N connections from IP, from each IP of the list in turn
        (h2c with prior knowledge, or TLS with ALPN h2), and on each S streams at once (at most what the server's
        SETTINGS allow), `GET TEMPLATE` with `{n}` replaced by a number
        unique to the stream. Prints "sent <streams>" once the first
        streams are written. Without --for it then waits for those answers;
        with --for it opens a new stream for each one answered until
        SECONDS have passed, then waits for the rest. Ends with
        "done <status>=<count> ... reset=<n> noretry=<n> open=<n>": reset
        counts streams the server reset, noretry 503s without
        `Retry-After: 1`, open streams unanswered by --timeout (default 10)
        after the last was sent. With --cancel-after, the streams still
        open after SECONDS are reset (RST_STREAM CANCEL) and the
        connections closed at once, and "done" says "cancelled=<n>".
        Any connection failure prints "error <what>" and exits 1.
"""

import argparse
import select
import socket
import ssl
import sys
import time


def check():
    try:
        import h2  # noqa: F401
    except ImportError as e:
        print(f"h2 is not importable: {e}", file=sys.stderr)
        return 1
    return 0


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Conn:
    def __init__(self, args, bind):
        import h2.config
        import h2.connection

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if bind:
            sock.bind((bind, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", args.port))
        if args.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
            sock = ctx.wrap_socket(sock, server_hostname=args.sni)
            if sock.selected_alpn_protocol() != "h2":
                raise ConnectionError(f"ALPN chose {sock.selected_alpn_protocol()}")
        self.sock = sock
        self.h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True)
        )
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())
        self.open = set()
        # Statuses of answers whose stream has not ended yet.
        self.status = {}
        self.settled = False
        # The server's SETTINGS say how many streams it allows at once.
        while not self.settled:
            self.pump()

    def pump(self):
        """Reads what the server sent; returns the events."""
        import h2.events

        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed by the server")
        events = self.h2.receive_data(data)
        for e in events:
            if isinstance(e, h2.events.RemoteSettingsChanged):
                self.settled = True
            elif isinstance(e, h2.events.DataReceived):
                self.h2.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        out = self.h2.data_to_send()
        if out:
            self.sock.sendall(out)
        return events

    def room(self, wanted):
        return max(0, min(wanted, self.h2.remote_settings.max_concurrent_streams) - len(self.open))

    def send(self, path, authority):
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(
            sid,
            [
                (":method", "GET"),
                (":scheme", "https" if self.tls else "http"),
                (":authority", authority),
                (":path", path),
            ],
            end_stream=True,
        )
        self.open.add(sid)

    def flush(self):
        out = self.h2.data_to_send()
        if out:
            self.sock.sendall(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--check", action="store_true")
    p.add_argument("--port", type=int)
    p.add_argument("--bind")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--sni", default="shop.example.com")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--path")
    p.add_argument("--for", dest="duration", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--cancel-after", type=float)
    args = p.parse_args()
    if args.check:
        return check()
    import h2.events

    try:
        conns = []
        binds = args.bind.split(",") if args.bind else [None]
        for i in range(args.connections):
            c = Conn(args, binds[i % len(binds)])
            c.tls = args.tls
            conns.append(c)
    except Exception as e:  # noqa: BLE001 (reported to the test)
        say(f"error connect: {e!r}")
        return 1
    counter = [0]

    def fill(c):
        n = c.room(args.streams)
        for _ in range(n):
            counter[0] += 1
            c.send(args.path.replace("{n}", str(counter[0])), args.sni)
        c.flush()
        return n

    statuses = {}
    reset = noretry = 0
    try:
        sent = sum(fill(c) for c in conns)
        say(f"sent {sent}")
        until = time.monotonic() + args.duration
        deadline = None
        while True:
            now = time.monotonic()
            flooding = now < until
            if not flooding and deadline is None:
                deadline = now + (
                    args.timeout if args.cancel_after is None else args.cancel_after
                )
            if not flooding and (all(not c.open for c in conns) or now >= deadline):
                break
            ready, _, _ = select.select([c.sock for c in conns], [], [], 0.05)
            for c in conns:
                if c.sock not in ready and not (args.tls and c.sock.pending()):
                    continue
                for e in c.pump():
                    if isinstance(e, h2.events.ResponseReceived):
                        h = {k.decode().lower(): v.decode() for k, v in e.headers}
                        status = int(h[":status"])
                        c.status[e.stream_id] = status
                        if status == 503 and h.get("retry-after") != "1":
                            noretry += 1
                    elif isinstance(e, h2.events.StreamEnded):
                        status = c.status.pop(e.stream_id, 0)
                        statuses[status] = statuses.get(status, 0) + 1
                        c.open.discard(e.stream_id)
                    elif isinstance(e, h2.events.StreamReset):
                        reset += 1
                        c.open.discard(e.stream_id)
                if flooding:
                    fill(c)
    except Exception as e:  # noqa: BLE001 (reported to the test)
        say(f"error {e!r}")
        return 1
    counts = " ".join(f"{k}={v}" for k, v in sorted(statuses.items()))
    still_open = sum(len(c.open) for c in conns)
    if args.cancel_after is not None:
        import h2.errors

        for c in conns:
            for sid in sorted(c.open):
                c.h2.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
            c.flush()
        counts += f" cancelled={still_open}"
        still_open = 0
    say(f"done {counts} reset={reset} noretry={noretry} open={still_open}")
    for c in conns:
        c.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
