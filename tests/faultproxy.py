"""A fault-injecting HTTP proxy between the jobs and a real S3 server (tests only).

The jobs are pointed at the proxy's endpoint; it forwards each request, unchanged (the Host
header too, so SigV4 signatures stay valid), to the real server, except when a fault rule
says otherwise:

  slowdown        answer 503 SlowDown without forwarding (AWS repartitioning a prefix)
  internal        answer 500 InternalError without forwarding
  error_200       answer 200 with an <Error> body without forwarding (AWS documents it for
                  CopyObject: the error happened "during the copy")
  reset_before    close the connection before forwarding: the server never saw it
  reset_after     forward, let the server act, then close without answering: it happened,
                  the client cannot know
  slow            forward after a delay
  truncate        forward, then answer with the first half of the body (a stream cut short)
  denied          answer 403 AccessDenied without forwarding (a policy refusing one key, or all)
  hook            call ``action()`` (say, another writer's PUT), then forward
  down            refuse: close every connection at once (the server went away), until
                  :meth:`FaultProxy.up` or the rule's ``seconds`` run out
  answer          answer ``status`` with ``body`` without forwarding (a server that answers
                  something else: Ceph RGW 16.2 answers ``GET /bucket?encryption`` with a
                  listing)
  checksum_refused  answer 400 to a request carrying boto3's checksum headers
                  (``x-amz-checksum-*``, ``x-amz-sdk-checksum-algorithm``), as older MinIO
                  releases do; forward the others
  strip_header    forward without the request header ``header``, signed again (SigV4, with
                  the request's access key and region and :attr:`FaultProxy.secret_key`): a
                  server that ignores that header (Ceph RGW 16.2 and ``x-amz-tagging`` on
                  CreateMultipartUpload, moto and ``x-amz-copy-source-if-match``)

Rules match on the S3 operation (derived from method, query and headers), a bucket, a key,
the headers a request carries (``carrying``: name prefixes) and a probability; ``after``
skips the first matching requests, ``times`` caps how often a rule fires. Everything is
counted, so a test can assert the faults really happened.
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

FAULTS = ("slowdown", "internal", "error_200", "reset_before", "reset_after", "slow", "down", "denied", "hook", "truncate",
          "answer", "checksum_refused", "strip_header")
CHECKSUM_HEADERS = ("x-amz-checksum-", "x-amz-sdk-checksum-algorithm")


def operation_of(method: str, path: str, headers) -> tuple[str, str]:
    """(S3 operation, bucket) of a path-style request."""
    parts = urlsplit(path)
    query = parse_qs(parts.query, keep_blank_values=True)
    segments = parts.path.lstrip("/").split("/", 1)
    bucket = segments[0]
    has_key = len(segments) == 2 and segments[1] != ""
    if method == "PUT" and has_key:
        if "tagging" in query:
            return "PutObjectTagging", bucket
        if headers.get("x-amz-copy-source"):
            return ("UploadPartCopy" if "partNumber" in query else "CopyObject"), bucket
        return ("UploadPart" if "partNumber" in query else "PutObject"), bucket
    if method == "POST":
        if "delete" in query:
            return "DeleteObjects", bucket
        if "uploads" in query:
            return "CreateMultipartUpload", bucket
        if "uploadId" in query:
            return "CompleteMultipartUpload", bucket
    if method == "GET":
        if not has_key:
            if "list-type" in query:
                return "ListObjectsV2", bucket
            return "GetBucket" + (next(iter(query), "") or "List").capitalize(), bucket
        return ("GetObjectTagging" if "tagging" in query else "GetObject"), bucket
    if method == "HEAD":
        return ("HeadObject" if has_key else "HeadBucket"), bucket
    if method == "DELETE" and has_key:
        if "tagging" in query:
            return "DeleteObjectTagging", bucket
        return ("AbortMultipartUpload" if "uploadId" in query else "DeleteObject"), bucket
    return f"{method} {parts.path}", bucket


@dataclass
class Rule:
    fault: str
    probability: float = 1.0
    operations: Optional[tuple[str, ...]] = None  # None: every operation
    bucket: Optional[str] = None
    key: Optional[str] = None  # only requests whose decoded path contains this
    skip_key: Optional[str] = None  # never requests whose decoded path contains this
    action: Optional[Callable[[], None]] = None  # hook: what to do before forwarding
    after: int = 0  # let this many matching requests through first
    times: Optional[int] = None  # fire at most this often
    seconds: float = 0.0  # slow: the delay; down: how long the server stays away
    carrying: Optional[tuple[str, ...]] = None  # only requests with a header whose name starts so
    status: int = 200  # answer: the status
    body: bytes = b""  # answer: the body
    header: Optional[str] = None  # strip_header: which one
    seen: int = 0
    fired: int = 0

    def __post_init__(self):
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}")
        if self.fault == "checksum_refused" and self.carrying is None:
            self.carrying = CHECKSUM_HEADERS
        if self.fault == "strip_header" and not self.header:
            raise ValueError("strip_header needs header=")

    def matches(self, operation: str, bucket: str, path: str, header_names: tuple[str, ...] = ()) -> bool:
        return ((self.operations is None or operation in self.operations)
                and (self.bucket is None or bucket == self.bucket)
                and (self.key is None or self.key in path)
                and (self.skip_key is None or self.skip_key not in path)
                and (self.carrying is None or any(name.startswith(self.carrying) for name in header_names)))


@dataclass
class FaultProxy:
    upstream: str  # http://127.0.0.1:port of the real server
    seed: int = 0
    rules: list[Rule] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # (fault, operation) -> times
    requests: Counter = field(default_factory=Counter)  # operation -> requests seen
    secret_key: Optional[str] = None  # strip_header signs again with it (default: AWS_SECRET_ACCESS_KEY)

    def __post_init__(self):
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._down_until = 0.0
        target = urlsplit(self.upstream)
        self._host, self._port = target.hostname, target.port
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    # --- control, from the test -------------------------------------------------------
    def add(self, fault: str, **options) -> Rule:
        rule = Rule(fault, **options)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self._down_until = 0.0

    def down(self, seconds: float = 3600.0) -> None:
        with self._lock:
            self._down_until = time.monotonic() + seconds

    def up(self) -> None:
        with self._lock:
            self._down_until = 0.0

    @property
    def is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until no request is in the proxy's hands (a ``slow`` one forwards after its
        client died: a test wants it landed before it looks)."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._in_flight == 0, timeout):
                raise TimeoutError(f"{self._in_flight} request(s) still in the fault proxy after {timeout}s")

    def started(self) -> None:
        with self._idle:
            self._in_flight += 1

    def finished(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def fired(self, fault: Optional[str] = None) -> int:
        return sum(n for (f, _), n in self.counts.items() if fault is None or f == fault)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- deciding, in the handler's thread -------------------------------------------
    def decide(self, operation: str, bucket: str, path: str = "",
               header_names: tuple[str, ...] = ()) -> Optional[Rule]:
        with self._lock:
            self.requests[operation] += 1
            if self.is_down:
                self.counts[("down", operation)] += 1
                return Rule("down")
            for rule in self.rules:
                if not rule.matches(operation, bucket, path, header_names):
                    continue
                rule.seen += 1
                if rule.seen <= rule.after or (rule.times is not None and rule.fired >= rule.times):
                    continue
                if self._rng.random() >= rule.probability:
                    continue
                rule.fired += 1
                self.counts[(rule.fault, operation)] += 1
                if rule.fault == "down":
                    self._down_until = time.monotonic() + (rule.seconds or 3600.0)
                return rule
        return None

    def forward(self, method: str, path: str, headers, body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=dict(headers))
            response = conn.getresponse()
            data = response.read()
            return response.status, response.getheaders(), data
        finally:
            conn.close()


    def resign_without(self, method: str, path: str, headers: list, body: bytes, header: str) -> list:
        """The request's headers without ``header``, signed again as the client would have."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        kept = [(k, v) for k, v in headers if k.lower() not in (header.lower(), "authorization")]
        authorization = next(v for k, v in headers if k.lower() == "authorization")
        # Credential=<access key>/<date>/<region>/s3/aws4_request
        access_key, _, region, *_ = authorization.split("Credential=")[1].split(",")[0].split("/")
        host = next(v for k, v in headers if k.lower() == "host")
        request = AWSRequest(method=method, url=f"http://{host}{path}", data=body, headers=dict(kept))
        secret = self.secret_key or os.environ["AWS_SECRET_ACCESS_KEY"]
        S3SigV4Auth(Credentials(access_key, secret), "s3", region).add_auth(request)
        return list(request.headers.items())


def _error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>fault-proxy</RequestId></Error>").encode()


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart

    def log_message(self, *args) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _answer(self, status: int, headers, body: bytes) -> None:
        self.send_response_only(status)
        length = str(len(body))
        for name, value in headers:
            lowered = name.lower()
            if lowered == "content-length" and self.command == "HEAD":
                length = value  # a HEAD says the object's size, with no body
            if lowered in ("transfer-encoding", "connection", "content-length"):
                continue
            self.send_header(name, value)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        self.owner.started()
        try:
            self._serve()
        finally:
            self.owner.finished()

    def _serve(self) -> None:
        body = self._read_body()
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in ("transfer-encoding",)]
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            headers.append(("Content-Length", str(len(body))))
        operation, bucket = operation_of(self.command, self.path, self.headers)
        names = tuple(name.lower() for name in self.headers.keys())
        rule = self.owner.decide(operation, bucket, unquote(self.path), names)
        fault = rule.fault if rule else None
        if fault in ("down", "reset_before"):
            return self._drop()
        if fault == "slowdown":
            return self._answer(503, [("Content-Type", "application/xml")],
                                _error_xml("SlowDown", "Please reduce your request rate."))
        if fault == "internal":
            return self._answer(500, [("Content-Type", "application/xml")],
                                _error_xml("InternalError", "We encountered an internal error. Please try again."))
        if fault == "error_200":
            return self._answer(200, [("Content-Type", "application/xml")],
                                _error_xml("InternalError", "We encountered an internal error. Please try again."))
        if fault == "denied":
            return self._answer(403, [("Content-Type", "application/xml")], _error_xml("AccessDenied", "Access Denied"))
        if fault == "answer":
            return self._answer(rule.status, [("Content-Type", "application/xml")], rule.body)
        if fault == "checksum_refused":
            refused = next(name for name in names if name.startswith(CHECKSUM_HEADERS))
            return self._answer(400, [("Content-Type", "application/xml")], _error_xml(
                "InvalidArgument", f"Unsupported header &apos;{refused}&apos; received for this API call."))
        if fault == "strip_header":
            headers = self.owner.resign_without(self.command, self.path, headers, body, rule.header)
        if fault == "slow":
            time.sleep(rule.seconds or 1.0)
        if fault == "hook":
            rule.action()
        try:
            status, response_headers, data = self.owner.forward(self.command, self.path, headers, body)
        except OSError:
            return self._drop()
        if fault == "reset_after":
            return self._drop()
        if fault == "truncate":
            data = data[:len(data) // 2]
        self._answer(status, response_headers, data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
