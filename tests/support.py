"""Helpers shared by the end-to-end tests: free loopback ports, the real sidecar binary
started on them and stopped again (only the process the helper started, by its PID), and the
pieces of the in-test provider fakes (a threaded loopback server counting hits and request-shape
violations, its reply helpers, SigV4 recomputed independently of the Rust crate, and Bedrock's
event-stream framing). The OpenAI-compatible fake with scripted failures is the Rust binary
`detour-fake-upstream`; these Python fakes cover what it does not speak (Anthropic, Bedrock,
STS, IMDS, Entra ID, Google's token endpoint, Vertex)."""

import binascii
import contextlib
import hashlib
import hmac
import http.server
import json
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest

SIDECAR_BIN = os.environ.get("DETOUR_SIDECAR_BIN", "")
UPSTREAM_BIN = os.environ.get("DETOUR_FAKE_UPSTREAM_BIN", "")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ok(url, proc, log_path, timeout=15.0):
    """Polls `url` until it answers 200, the process exits, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{url} not ready; log:\n{log_path.read_text(errors='replace')[-4000:]}")
        time.sleep(0.05)


def stop(proc, timeout=10):
    """Stops one process this test started: SIGTERM, then SIGKILL if it will not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Sidecar:
    def __init__(self, proc, port, admin, tmp):
        self.proc, self.port, self.admin, self.tmp = proc, port, admin, tmp
        self.base = f"http://127.0.0.1:{port}"
        self.admin_base = f"http://127.0.0.1:{admin}"

    def stdout(self):
        return (self.tmp / "sidecar.stdout").read_text(errors="replace")

    def stderr(self):
        return (self.tmp / "sidecar.stderr").read_text(errors="replace")

    def metrics(self):
        with urllib.request.urlopen(f"{self.admin_base}/metrics", timeout=5) as r:
            return r.read().decode()


@contextlib.contextmanager
def sidecar(tmp, routes_yaml, *extra_args):
    """Runs `detour-sidecar --routes` on free loopback ports until the block ends."""
    if not SIDECAR_BIN or not os.path.exists(SIDECAR_BIN):
        pytest.skip("DETOUR_SIDECAR_BIN is not set (run through scripts/test)")
    routes = tmp / "routes.yaml"
    routes.write_text(routes_yaml)
    port, admin = free_port(), free_port()
    with open(tmp / "sidecar.stdout", "wb") as out, open(tmp / "sidecar.stderr", "wb") as err:
        proc = subprocess.Popen(
            [SIDECAR_BIN, "--routes", str(routes), "--listen", f"127.0.0.1:{port}",
             "--admin-listen", f"127.0.0.1:{admin}", *extra_args],
            stdout=out, stderr=err,
        )
        try:
            wait_http_ok(f"http://127.0.0.1:{admin}/readyz", proc, tmp / "sidecar.stderr")
            yield Sidecar(proc, port, admin, tmp)
        finally:
            stop(proc)


@contextlib.contextmanager
def fake_upstream(tmp):
    """Runs the `detour-fake-upstream` binary on a free loopback port until the block ends;
    yields its base URL (stubs are scripted at `<base>/_control/<stub>/<mode>`)."""
    if not UPSTREAM_BIN or not os.path.exists(UPSTREAM_BIN):
        pytest.skip("DETOUR_FAKE_UPSTREAM_BIN is not set (run through scripts/test)")
    with open(tmp / "upstream.log", "wb") as log:
        proc = subprocess.Popen([UPSTREAM_BIN], stdout=subprocess.PIPE, stderr=log)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on "), line
        yield "http://" + line.split()[-1]
    finally:
        stop(proc)


class FakeServer(http.server.ThreadingHTTPServer):
    """A provider fake on a free loopback port, serving `handler` on threads: hits counted per
    name, request-shape violations collected (each test asserts there are none)."""
    daemon_threads = True

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.lock = threading.Lock()
        self.hits = {}
        self.errors = []

    def hit(self, what):
        with self.lock:
            self.hits[what] = self.hits.get(what, 0) + 1

    def violation(self, what):
        with self.lock:
            self.errors.append(what)


class FakeHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, silent, with the ways a fake answers."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def headers_lower(self):
        return {k.lower(): v for k, v in self.headers.items()}

    def read_request(self):
        """The request's body, its headers with lower-case names, and its path."""
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        return raw, self.headers_lower(), urllib.parse.urlsplit(self.path).path

    def start_chunked(self, content_type):
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

    def chunk(self, data):
        """One chunk of a chunked body; `b""` ends it."""
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def anthropic_sse(self, events):
        """A whole Anthropic Messages stream: each event named by its type."""
        self.start_chunked("text/event-stream")
        for e in events:
            self.chunk(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode())
        self.chunk(b"")

    def bedrock_stream(self, events):
        """A whole Bedrock ConverseStream body: `(kind, payload)` events in event-stream frames."""
        self.start_chunked("application/vnd.amazon.eventstream")
        for kind, obj in events:
            self.chunk(es_event(kind, obj))
        self.chunk(b"")

    def reply(self, status, obj, headers=None):
        self.raw(status, "application/json", json.dumps(obj).encode(), headers)

    def text(self, status, text, headers=None, ctype="text/plain"):
        self.raw(status, ctype, text.encode(), headers)

    def raw(self, status, content_type, data, headers=None):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def _hmac(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sigv4_problem(method, path, headers, body, key_id, secret, region, token=None, must_sign=()):
    """Recomputes the SigV4 signature of a Bedrock request (service `bedrock`) signed with
    `key_id`/`secret` and session `token` (None: none may be sent); what is wrong, or None."""
    auth = headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return "no AWS4-HMAC-SHA256 Authorization"
    parts = dict(p.split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(", "))
    amz_date = headers.get("x-amz-date", "")
    scope = f"{amz_date[:8]}/{region}/bedrock/aws4_request"
    if parts.get("Credential") != f"{key_id}/{scope}":
        return f"credential {parts.get('Credential')}, not {key_id}/{scope}"
    if headers.get("x-amz-security-token") != token:
        return "session token missing, unexpected or wrong"
    signed = parts["SignedHeaders"].split(";")
    for must in must_sign:
        if must not in signed:
            return f"{must} not signed"
    # Non-S3 services encode the (already encoded) path once more.
    canonical_uri = urllib.parse.quote(path, safe="/-_.~")
    canonical_headers = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
    canonical = "\n".join([method, canonical_uri, "", canonical_headers, ";".join(signed),
                           hashlib.sha256(body).hexdigest()])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(("AWS4" + secret).encode(), amz_date[:8])
    for part in (region, "bedrock", "aws4_request"):
        key = _hmac(key, part)
    want = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return None if hmac.compare_digest(want, parts.get("Signature", "")) else "signature does not match"


def es_frame(headers, payload):
    """One event-stream message: prelude (lengths + CRC), string headers, payload, CRC."""
    hb = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        hb += struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 12 + len(hb) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hb))
    msg = prelude + struct.pack(">I", binascii.crc32(prelude)) + hb + payload
    return msg + struct.pack(">I", binascii.crc32(msg))


def es_event(kind, obj):
    """A Bedrock ConverseStream event `kind` carrying `obj`."""
    return es_frame({":message-type": "event", ":event-type": kind, ":content-type": "application/json"},
                    json.dumps(obj).encode())
