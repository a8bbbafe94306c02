#!/usr/bin/env python3
"""One HTTP/3 GET with a chosen SNI, for tests/http3.rs.

curl in Debian 12 has no HTTP/3, so the integration test drives QUIC through
aioquic (PyPI). The server certificate is not verified: the test compares
the chain it got with the record it stored, which is stricter than trusting
a CA.

Usage:
    h3_get.py --check
        exit 0 when aioquic can be imported (prints its version)
    h3_get.py --port PORT --sni NAME [--authority NAME] [--host 127.0.0.1]
              [--path /] [--timeout 5]
        prints, on success (exit 0):
            status 200
            alpn h3
            body <the response body, hex-encoded>
            <the server's certificates as PEM, leaf first>
        and on failure "error <what went wrong>" (exit 1). A line format, so
        the Rust test needs no JSON parser.
"""

import argparse
import asyncio
import ssl
import sys


def check():
    try:
        import aioquic
    except ImportError as e:
        print(f"aioquic is not importable: {e}", file=sys.stderr)
        return 1
    print(aioquic.__version__)
    return 0


async def h3_get(host, port, sni, authority, path, timeout):
    # Imported here so that --check reports a missing aioquic cleanly.
    from aioquic.asyncio.client import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import ConnectionTerminated
    from cryptography.hazmat.primitives.serialization import Encoding

    def describe(event):
        # QUIC carries a TLS alert as CRYPTO_ERROR 0x100 + alert (RFC 9001,
        # 4.8); name it so the test can tell, e.g., unrecognized_name (112).
        what = f"connection closed: error 0x{event.error_code:x}"
        if 0x100 <= event.error_code <= 0x1FF:
            what += f" (TLS alert {event.error_code - 0x100})"
        return f"{what} {event.reason_phrase!r}"

    protocols = []

    def create_protocol(*args, **kwargs):
        protocols.append(Client(*args, **kwargs))
        return protocols[-1]

    class Client(QuicConnectionProtocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.http = H3Connection(self._quic)
            self.done = asyncio.get_running_loop().create_future()
            self.headers = []
            self.body = bytearray()

        def finish(self, error=None):
            if self.done.done():
                return
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)
                # Mark it retrieved: after a timeout nobody awaits it.
                self.done.exception()

        def quic_event_received(self, event):
            if isinstance(event, ConnectionTerminated):
                self.finish(ConnectionError(describe(event)))
                return
            for ev in self.http.handle_event(event):
                if isinstance(ev, HeadersReceived):
                    self.headers.extend(ev.headers)
                elif isinstance(ev, DataReceived):
                    self.body.extend(ev.data)
                else:
                    continue
                if ev.stream_ended:
                    self.finish()

        def get(self, authority, path):
            stream_id = self._quic.get_next_available_stream_id()
            self.http.send_headers(
                stream_id,
                [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":authority", authority.encode()),
                    (b":path", path.encode()),
                    (b"user-agent", b"dyncert-h3-test"),
                ],
                end_stream=True,
            )
            self.transmit()

    # aioquic's own handshake future is left unretrieved when a connection
    # times out; asyncio would print a traceback for it at exit.
    def quiet(loop, context):
        if context.get("message") != "Future exception was never retrieved":
            loop.default_exception_handler(context)

    asyncio.get_running_loop().set_exception_handler(quiet)

    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.server_name = sni
    config.verify_mode = ssl.CERT_NONE

    try:
        async with connect(
            host, port, configuration=config, create_protocol=create_protocol
        ) as client:
            client.get(authority or sni, path)
            await asyncio.wait_for(client.done, timeout)
    except ConnectionError:
        # aioquic's handshake error says nothing; ours says how the server
        # closed the connection.
        closed = protocols[0].done if protocols else None
        if closed is not None and closed.done() and closed.exception():
            raise closed.exception() from None
        raise

    tls = client._quic.tls
    # aioquic keeps the peer's chain on its TLS context (not public API);
    # the test needs the certificates exactly as the server sent them.
    chain = []
    if tls._peer_certificate is not None:
        chain.append(tls._peer_certificate)
    chain.extend(tls._peer_certificate_chain)
    status = dict(client.headers).get(b":status", b"0").decode()
    lines = [
        f"status {status}",
        f"alpn {tls.alpn_negotiated}",
        f"body {bytes(client.body).hex()}",
    ]
    lines.extend(c.public_bytes(Encoding.PEM).decode().strip() for c in chain)
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int)
    p.add_argument("--sni")
    # The request's :authority; the SNI by default.
    p.add_argument("--authority")
    p.add_argument("--path", default="/")
    p.add_argument("--timeout", type=float, default=5.0)
    a = p.parse_args()
    if a.check:
        return check()
    if a.port is None or a.sni is None:
        p.error("--port and --sni are required")
    try:
        result = asyncio.run(
            asyncio.wait_for(
                h3_get(a.host, a.port, a.sni, a.authority, a.path, a.timeout), a.timeout + 1
            )
        )
    except Exception as e:  # noqa: BLE001 -- the test prints whatever went wrong
        print(f"error {type(e).__name__}: {e}".replace("\n", " "))
        return 1
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
