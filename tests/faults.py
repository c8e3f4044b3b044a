"""A small HTTP proxy in front of the S3 server that misbehaves on request: it refuses
uploads after N parts (as a provider failing mid-upload would), or holds a part request
open so the test can kill the backup in the middle of an upload. With ``check_sums`` it
also does what moto leaves out and AWS S3 does: a body that does not match its Content-MD5
or its x-amz-checksum-crc32 is answered 400 BadDigest."""

from __future__ import annotations

import base64
import hashlib
import http.client
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .servers import free_port


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
        self.etag_not_md5 = False  # part ETags replaced by other hex, as with SSE-KMS on AWS
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

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                is_part = self.command == "PUT" and "partNumber" in parse_qs(urlsplit(self.path).query)
                fault = False
                if is_part:
                    with proxy.lock:
                        number = int(parse_qs(urlsplit(self.path).query)["partNumber"][0])
                        proxy.part_headers.append((number, {k.lower(): v for k, v in self.headers.items()}))
                        proxy.parts_seen += 1
                        fault = proxy.mode != "pass" and proxy.parts_seen > proxy.after_parts
                elif proxy.mode == "refuse" and proxy.parts_seen > proxy.after_parts:
                    fault = True
                if fault and proxy.mode == "hang":
                    proxy.hanging.set()
                    proxy.release.wait(120)
                sent_md5, sent_crc = self.headers.get("Content-MD5"), self.headers.get("x-amz-checksum-crc32")
                wrong = bool(sent_md5) and base64.b64encode(hashlib.md5(body).digest()).decode() != sent_md5
                wrong |= bool(sent_crc) and base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode() != sent_crc
                if proxy.check_sums and wrong:
                    return self._error(400, "BadDigest", "The checksum you specified did not match what we received.")
                if fault or (proxy.refuse_delete and self.command == "DELETE"):
                    return self._error(503, "ServiceUnavailable", "refused by the test proxy")
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                headers["Host"] = f"{proxy.upstream[0]}:{proxy.upstream[1]}"
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() == "etag" and is_part and proxy.etag_not_md5:
                        value = '"' + hashlib.md5(value.encode()).hexdigest() + '"'
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

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
