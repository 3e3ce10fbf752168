"""A tiny local HTTP stub for failure modes the real vending service cannot be
made to produce on demand. Used only by tests/bootstrap/*.bats, on 127.0.0.1.

The first path segment picks the behaviour (the script appends /activation):
  /hang/...       accepts the request and never answers (holds it 120 s)
  /malformed/...  200 with a truncated JSON body
  /html/...       200 with an HTML page (a captive portal or proxy error page)
  /refused/...    200 with a well-formed activation that SSM does not know
                  (random ID and code), so registration is refused
  /echo/...       like /refused, and records the request line and headers
  /notfound/...   404 with the service's JSON error
  /badrequest/... 400 with the service's JSON error (InvalidParameter)
  /pooldisabled/...  403 PoolDisabled   (the pool's verdicts, issue 10; the messages
  /forbidden/...     403 Forbidden       name the pool given in ?pool=)
  /misconfigured/... 500 PoolMisconfigured
  /accessdenied/...  403 AccessDenied, as API Gateway's resource policy answers
  /internal/...      500 InternalError (a failure worth retrying)
The relay modes pass GET .../activation on to the real service (--upstream, with the
query, X-Machine-Id and x-apigw-api-id) and answer POST .../registrations (issue 22)
themselves, as the mode says; each POST is logged with its JSON body:
  /confirmed/...       200 {"InstanceId", "Tags": {"Name", "activation-vending:machine-id"},
                       "Replaced": ["mi-0123456789abcdef0"]}
  /notconfirmable/...  403 NotConfirmable
  /noroute/...         404 NotFound (a service without the route)
  /throttled/...       503 Throttled with Retry-After: 1, every time
  /refusedonce/...     the first GET from each X-Machine-Id gets an activation SSM
                       refuses (as /refused), the next ones are relayed; a POST with
                       "Error" is 200 {"ActivationId", "Confirmed": true}, one with
                       "InstanceId" as /confirmed
Every request is appended to --log as one JSON line. With --cert/--key it also
serves HTTPS on a second port (written to --tls-port-file), to prove that the
script verifies TLS. With --proxy-port-file it also runs an HTTP proxy that
answers CONNECT to any host by tunnelling to that HTTPS port (logged as mode
"proxy-connect" with the target), to prove that the fetch goes through --proxy.
"""

from __future__ import annotations

import argparse
import json
import urllib.parse
import os
import secrets
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG_LOCK = threading.Lock()
RELAY_MODES = ("confirmed", "notconfirmable", "noroute", "throttled", "refusedonce")
REFUSED_ONCE: set[str] = set()


def refused_activation() -> bytes:
    """A well-formed activation that SSM (the emulator) does not know."""
    body = {
        "ActivationId": str(uuid.uuid4()),
        "ActivationCode": secrets.token_urlsafe(15)[:20].replace("-", "A").replace("_", "B"),
        "Region": "us-east-1",
        "ExpirationDate": "2099-01-01T00:00:00Z",
        "Pool": "default",
    }
    return json.dumps(body).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log_path = ""
    upstream = ""

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def record(self, mode: str, body: object = None) -> None:
        entry = {"mode": mode, "method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        if body is not None:
            entry["body"] = body
        with LOG_LOCK, open(self.log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")

    def send(self, status: int, body: bytes, content_type: str = "application/json", retry_after: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if retry_after:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def relay(self) -> None:
        """GET /activation of the real service, with this request's query and headers."""
        query = urllib.parse.urlsplit(self.path).query
        request = urllib.request.Request(self.upstream.rstrip("/") + "/activation" + ("?" + query if query else ""))
        for name in ("X-Machine-Id", "x-apigw-api-id", "X-Instance-Name"):
            if self.headers.get(name):
                request.add_header(name, self.headers[name])
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 (loopback)
                self.send(answer.status, answer.read())
        except urllib.error.HTTPError as error:
            self.send(error.code, error.read(), retry_after=error.headers.get("Retry-After", ""))

    def do_POST(self) -> None:  # noqa: N802
        mode = self.path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"unparsable": raw.decode("utf-8", "replace")}
        self.record(mode, body)
        if mode not in RELAY_MODES or not self.path.split("?", 1)[0].endswith("/registrations"):
            self.send(404, b'{"error":{"code":"NotFound","message":"unknown stub mode"}}')
            return
        if mode == "notconfirmable":
            self.send(403, b'{"error":{"code":"NotConfirmable","message":"the node was registered before the vend"}}')
        elif mode == "noroute":
            self.send(404, b'{"error":{"code":"NotFound","message":"no route /registrations"}}')
        elif mode == "throttled":
            self.send(503, b'{"error":{"code":"Throttled","message":"slow down"}}', retry_after="1")
        elif "Error" in body:
            self.send(200, json.dumps({"ActivationId": body.get("ActivationId"), "Confirmed": True}).encode())
        else:
            tags = {"Name": body.get("Instance"), "activation-vending:machine-id": self.headers.get("X-Machine-Id")}
            answer = {"InstanceId": body.get("InstanceId"), "Tags": tags, "Replaced": ["mi-0123456789abcdef0"]}
            self.send(200, json.dumps(answer).encode())

    def do_GET(self) -> None:  # noqa: N802
        mode = self.path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        self.record(mode)
        if mode in RELAY_MODES:
            machine = self.headers.get("X-Machine-Id", "")
            with LOG_LOCK:
                first = mode == "refusedonce" and machine not in REFUSED_ONCE
                REFUSED_ONCE.add(machine)
            if first:
                self.send(200, refused_activation())
            else:
                self.relay()
            return
        if mode == "hang":
            time.sleep(120)
            return
        if mode == "malformed":
            self.send(200, b'{"ActivationId": "5743558d-563b-4457-8682-d16c3e', "application/json")
            return
        if mode == "html":
            self.send(200, b"<html><body>Proxy login required</body></html>", "text/html")
            return
        if mode in ("refused", "echo"):
            self.send(200, refused_activation())
            return
        if mode == "badrequest":
            self.send(400, b'{"error":{"code":"InvalidParameter","message":"`a:b` is not a valid instance name"}}')
            return
        if mode == "notfound":
            self.send(404, b'{"error":{"code":"PoolNotFound","message":"no such pool"}}')
            return
        pool = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("pool", ["default"])[0]
        verdicts = {
            "pooldisabled": (403, "PoolDisabled", f"pool `{pool}` is disabled"),
            "forbidden": (403, "Forbidden", f"127.0.0.1 may not draw from pool `{pool}`"),
            "misconfigured": (500, "PoolMisconfigured", f"pool `{pool}`: registration_limit: 0 is not 1..1000"),
            "accessdenied": (403, "AccessDenied", "not reachable from here"),
            "internal": (500, "InternalError", "internal error"),
        }
        if mode in verdicts:
            status, code, message = verdicts[mode]
            self.send(status, json.dumps({"error": {"code": code, "message": message}}).encode())
            return
        self.send(404, b'{"error":{"code":"NotFound","message":"unknown stub mode"}}')


class ProxyHandler(BaseHTTPRequestHandler):
    """CONNECT host:port -> a tunnel to the stub's HTTPS port, whatever the host."""

    protocol_version = "HTTP/1.1"
    log_path = ""
    tls_port = 0

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_CONNECT(self) -> None:  # noqa: N802
        entry = {"mode": "proxy-connect", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
        with LOG_LOCK, open(self.log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
        upstream = socket.create_connection(("127.0.0.1", self.tls_port))
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        pipe(self.connection, upstream)


def pipe(a: socket.socket, b: socket.socket) -> None:
    def copy(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    other = threading.Thread(target=copy, args=(b, a), daemon=True)
    other.start()
    copy(a, b)
    other.join(timeout=130)
    b.close()


def listen(port_file: str, tls: ssl.SSLContext | None = None, handler=Handler) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    with open(port_file + ".tmp", "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.replace(port_file + ".tmp", port_file)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--tls-port-file")
    parser.add_argument("--proxy-port-file")
    parser.add_argument("--upstream", default="", help="the real service, for the relay modes")
    args = parser.parse_args()
    Handler.log_path = args.log
    Handler.upstream = args.upstream
    ProxyHandler.log_path = args.log
    if args.cert and args.key and args.tls_port_file:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        tls_server = listen(args.tls_port_file, context)
        ProxyHandler.tls_port = tls_server.server_address[1]
        threading.Thread(target=tls_server.serve_forever, daemon=True).start()
        if args.proxy_port_file:
            proxy_server = listen(args.proxy_port_file, handler=ProxyHandler)
            threading.Thread(target=proxy_server.serve_forever, daemon=True).start()
    listen(args.port_file).serve_forever()


if __name__ == "__main__":
    main()
