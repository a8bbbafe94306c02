#!/usr/bin/env python3
"""A minimal certificate API for dyncert's `dyncert_api` fallback.

Serves certificates from a directory of PEM files, one pair per name:

    certs/shop.example.com.crt   PEM chain, leaf first
    certs/shop.example.com.key   PEM private key
    certs/*.example.com.crt      a wildcard record (the '*' is literal)
    certs/*.example.com.key

    python3 examples/cert-api.py --dir certs/ --port 8080 [--token SECRET]

and answers the contract dyncert expects:

    GET /certs/<name>  200 {"crt": "...", "key": "..."}  both files exist
                       404                               no such name
                       401                               --token set and the
                                                         request lacks
                                                         "Authorization: Bearer <token>"
                       400                               a name with '/', '..'
                                                         or other odd characters

with nginx configured as

    dyncert_api        http://127.0.0.1:8080/certs/{name};
    dyncert_api_header Authorization "Bearer SECRET";

Python 3 standard library only. Files are read on every request, so a
renewed certificate is served as soon as it is written. It listens on
127.0.0.1 unless told otherwise (--bind): it hands out private keys.
"""

import argparse
import hmac
import json
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

PREFIX = "/certs/"
# dyncert sends normalised names: lowercase LDH labels, '*' (as %2A) for the
# left-most label of a wildcard. Anything else never names a file here.
NAME = re.compile(r"^(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*$")


def make_handler(cert_dir, token):
    class Handler(BaseHTTPRequestHandler):
        server_version = "cert-api/1"
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            path = urlsplit(self.path).path
            if not path.startswith(PREFIX):
                return self.reply(404, {"error": "not found"})
            if token is not None and not self.authorized():
                return self.reply(401, {"error": "unauthorized"},
                                  {"WWW-Authenticate": "Bearer"})
            name = unquote(path[len(PREFIX):])
            if "/" in name or ".." in name or not NAME.match(name):
                return self.reply(400, {"error": "invalid name"})
            try:
                with open(os.path.join(cert_dir, name + ".crt")) as f:
                    crt = f.read()
                with open(os.path.join(cert_dir, name + ".key")) as f:
                    key = f.read()
            except FileNotFoundError:
                return self.reply(404, {"error": "unknown name"})
            except OSError as e:
                self.log_error("cannot read the files of %s: %s", name, e.strerror)
                return self.reply(500, {"error": "cannot read the certificate"})
            self.reply(200, {"crt": crt, "key": key})

        def authorized(self):
            got = self.headers.get("Authorization", "")
            want = "Bearer " + token
            # Constant time, so the token cannot be guessed byte by byte.
            return hmac.compare_digest(got.encode(), want.encode())

        def reply(self, status, body, headers=None):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", required=True,
                   help="directory holding <name>.crt and <name>.key files")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--bind", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1)")
    p.add_argument("--token", default=os.environ.get("CERT_API_TOKEN"),
                   help="require 'Authorization: Bearer TOKEN' "
                        "(default: $CERT_API_TOKEN; none: no auth)")
    args = p.parse_args()
    if not os.path.isdir(args.dir):
        p.error(f"--dir {args.dir}: not a directory")
    server = ThreadingHTTPServer((args.bind, args.port),
                                 make_handler(args.dir, args.token))
    print(f"cert-api: serving {args.dir} on http://{args.bind}:{server.server_port}"
          f"{PREFIX}<name>{' (token required)' if args.token else ''}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
