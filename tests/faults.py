"""A small HTTP proxy in front of the S3 server that misbehaves on request: it refuses
uploads after N parts (as a provider failing mid-upload would), or holds a part request
open so the test can kill the backup in the middle of an upload. With ``check_sums`` it
also does what moto leaves out and AWS S3 does: a body that does not match its Content-MD5
or its x-amz-checksum-crc32 is answered 400 BadDigest.

It also imitates S3-compatible providers as they are, one switch each:
- ``etag_not_md5``: ETags that are no MD5s (AWS with SSE-KMS or SSE-C), on parts, objects and
  listings alike, and consistent (ListParts shows what UploadPart answered; Complete is
  translated back for moto);
- ``require_delete_md5``: DeleteObjects without Content-MD5 answered 400 MissingContentMD5
  (older MinIO, Ceph RGW);
- ``head_missing_403``: HEAD of a missing key answered 403 (AWS, for a key without s3:ListBucket);
- ``deny_list_uploads`` / ``deny_list_objects``: ListMultipartUploads / ListObjects answered
  403 AccessDenied (a least-privilege key); ``deny_writes``: every PUT and POST answered 403
  AccessDenied (a key that may not write at all); ``unavailable``: every request answered 503;
  ``refuse_part_copy``: UploadPartCopy answered 501 NotImplemented (providers without it).
moto dates every multipart upload 2010-11-10; the proxy gives the ones created through it
their real time in ListMultipartUploads (``initiated``, UploadId -> datetime, which a test may
set back to age an upload), as a real provider would."""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import threading
import zlib
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .servers import free_port

_ETAG = re.compile(r'"?([0-9a-f]{32})(-\d+)?"?')
_ETAG_IN_XML = re.compile(rb"<ETag>(&quot;|&#34;|\")?([0-9a-f]{32}(?:-\d+)?)(?:&quot;|&#34;|\")?</ETag>")


def _xml_etag(match: re.Match, etag: str) -> bytes:
    """An <ETag> element of a listing with another value, quoted as it was."""
    quote = match.group(1) or b""
    return b"<ETag>" + quote + etag.encode() + quote + b"</ETag>"


def _b64crc(body: bytes) -> str:
    return base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()


class S3Proxy:
    def __init__(self, upstream: str):
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.mode = "pass"          # pass | refuse | hang
        self.after_parts = 0        # parts let through before the fault starts
        self.parts_seen = 0
        self.part_headers: list[tuple[int, dict[str, str]]] = []  # (part number, headers) as received
        self.check_sums = False
        self.refuse_delete = False  # DELETE (abort an upload, delete an object) answered 503
        self.etag_not_md5 = False  # ETags replaced by other hex, as with SSE-KMS on AWS
        self.require_delete_md5 = False
        self.head_missing_403 = False
        self.deny_list_uploads = False
        self.deny_list_objects = False
        self.deny_writes = False
        self.unavailable = False
        self.refuse_part_copy = False
        self.initiated: dict[str, datetime] = {}  # UploadId -> when it was created through the proxy
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers) as received
        self.etags: dict[str, str] = {}  # fake ETag -> moto's
        self.hanging = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _error(self, status: int, code: str, message: str) -> None:
                payload = (f"<?xml version='1.0'?><Error><Code>{code}</Code>"
                           f"<Message>{message}</Message></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _kind(self) -> str:
                """What S3 operation the request is, as far as the switches care."""
                split = urlsplit(self.path)
                query = parse_qs(split.query, keep_blank_values=True)
                has_key = "/" in split.path.strip("/")
                if self.command == "PUT" and "partNumber" in query:
                    return "part"
                if self.command == "POST" and "delete" in query:
                    return "delete_objects"
                if self.command == "POST" and "uploads" in query:
                    return "create"
                if self.command == "POST" and "uploadId" in query:
                    return "complete"
                if self.command == "GET" and "uploadId" in query:
                    return "list_parts"
                if self.command == "GET" and "uploads" in query:
                    return "list_uploads"
                if self.command == "GET" and not has_key and ("list-type" in query or not query):
                    return "list_objects"
                return self.command.lower()

            def _refusal(self, kind: str, body: bytes) -> tuple[int, str, str] | None:
                """The error a switched-on provider behaviour answers this request with."""
                if proxy.unavailable:
                    return 503, "ServiceUnavailable", "the provider is down (test proxy)"
                if proxy.check_sums:
                    sent_md5, sent_crc = self.headers.get("Content-MD5"), self.headers.get("x-amz-checksum-crc32")
                    wrong = bool(sent_md5) and base64.b64encode(hashlib.md5(body).digest()).decode() != sent_md5
                    wrong |= bool(sent_crc) and _b64crc(body) != sent_crc
                    if wrong:
                        return 400, "BadDigest", "The checksum you specified did not match what we received."
                if proxy.require_delete_md5 and kind == "delete_objects" and not self.headers.get("Content-MD5"):
                    return 400, "MissingContentMD5", "Missing required header for this request: Content-Md5."
                if (proxy.deny_list_uploads and kind == "list_uploads") or (
                        proxy.deny_list_objects and kind == "list_objects") or (
                        proxy.deny_writes and self.command in ("PUT", "POST")):
                    return 403, "AccessDenied", "Access Denied"
                if proxy.refuse_part_copy and kind == "part" and self.headers.get("x-amz-copy-source"):
                    return 501, "NotImplemented", "A header you provided implies functionality that is not implemented"
                if proxy.refuse_delete and kind in ("delete", "delete_objects"):
                    return 503, "ServiceUnavailable", "refused by the test proxy"
                return None

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                kind = self._kind()
                fault = False
                with proxy.lock:
                    proxy.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                    if kind == "part":
                        number = int(parse_qs(urlsplit(self.path).query)["partNumber"][0])
                        proxy.part_headers.append((number, {k.lower(): v for k, v in self.headers.items()}))
                        proxy.parts_seen += 1
                        fault = proxy.mode != "pass" and proxy.parts_seen > proxy.after_parts
                    elif proxy.mode == "refuse" and proxy.parts_seen > proxy.after_parts:
                        fault = True
                if fault and proxy.mode == "hang":
                    proxy.hanging.set()
                    proxy.release.wait(120)
                refusal = self._refusal(kind, body)
                if refusal:
                    return self._error(*refusal)
                if fault:
                    return self._error(503, "ServiceUnavailable", "refused by the test proxy")
                if proxy.etag_not_md5 and kind == "complete":  # moto knows its own ETags only
                    body = proxy.real_etags(body)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                headers["Host"] = f"{proxy.upstream[0]}:{proxy.upstream[1]}"
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = proxy.rewrite(kind, response.status, response.read())
                status = response.status
                if proxy.head_missing_403 and self.command == "HEAD" and status == 404:
                    status = 403
                self.send_response(status)
                for key, value in response.getheaders():
                    if key.lower() == "etag" and proxy.etag_not_md5:
                        value = proxy.fake_etag(value)
                    if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(key, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length or 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def sent(self) -> int:
        """Bytes of request bodies PUT through the proxy: what went over the wire to S3."""
        with self.lock:
            return sum(int(h.get("content-length") or 0) for m, _, h in self.requests if m == "PUT")

    def part_copies(self) -> int:
        with self.lock:
            return sum(1 for m, _, h in self.requests if m == "PUT" and h.get("x-amz-copy-source"))

    def fake_etag(self, etag: str) -> str:
        """The ETag a provider with SSE-KMS would show for moto's: other hex, "-N" kept."""
        match = _ETAG.fullmatch(etag)
        if not match:
            return etag
        fake = hashlib.md5(b"sse-kms:" + match.group(1).encode()).hexdigest() + (match.group(2) or "")
        with self.lock:
            self.etags[fake] = match.group(1) + (match.group(2) or "")
        return f'"{fake}"'

    def real_etags(self, body: bytes) -> bytes:
        """A CompleteMultipartUpload body with moto's own part ETags again."""
        with self.lock:
            known = dict(self.etags)
        return _ETAG_IN_XML.sub(lambda m: _xml_etag(m, known.get(m.group(2).decode(), m.group(2).decode())), body)

    def rewrite(self, kind: str, status: int, data: bytes) -> bytes:
        """What the provider imitated answers in the body: its ETags in listings and in the
        Complete answer, the real creation time of uploads in ListMultipartUploads."""
        if status != 200:
            return data
        if kind == "create":
            found = re.search(rb"<UploadId>([^<]+)</UploadId>", data)
            if found:
                with self.lock:
                    self.initiated.setdefault(found.group(1).decode(), datetime.now(timezone.utc))
        if kind == "list_uploads":
            data = re.sub(rb"<Upload>.*?</Upload>", self._dated, data, flags=re.S)
        if self.etag_not_md5 and kind in ("list_parts", "complete", "list_objects"):
            data = _ETAG_IN_XML.sub(lambda m: _xml_etag(m, self.fake_etag(m.group(2).decode()).strip('"')), data)
        return data

    def _dated(self, match: re.Match) -> bytes:
        block = match.group(0)
        found = re.search(rb"<UploadId>([^<]+)</UploadId>", block)
        with self.lock:
            when = self.initiated.get(found.group(1).decode()) if found else None
        if when is None:
            return block
        stamp = when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z").encode()
        return re.sub(rb"<Initiated>[^<]*</Initiated>", b"<Initiated>" + stamp + b"</Initiated>", block)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
