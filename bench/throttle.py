"""A counting, optionally bandwidth-limited HTTP proxy in front of the benchmark's S3 server.

    client (doit backup, aws s3 cp, restic) -> ThrottleProxy -> moto (bench/s3server.py)

The benchmark sends every contender's S3 traffic through it, so each run says how many bytes
it sent up (request bodies), how many came down (response bodies), how many requests it made
and how many of them were UploadPartCopy (a PUT with partNumber and x-amz-copy-source: a part
the provider copies from an object it already has, no body sent). With a rate it is also the
site's uplink: a token bucket shared by all connections limits what goes up, as one line to
the provider would; what comes down is not limited.

Bodies are streamed in chunks, never held whole (a part is 8 MiB, an object can be 1 GiB).
It speaks enough HTTP/1.1 for S3 clients: keep-alive, Content-Length and chunked bodies both
ways, HEAD/204/304 without a body, and `Expect: 100-continue` (botocore sends it on every
upload with a file body and waits up to a second for the answer): the proxy answers
`100 Continue` at once and forwards the request without the header, as a provider that
accepts the upload would. The Host header is forwarded as the client sent it (moto checks no
signature; its answers then name the proxy).

In the benchmark it runs as a thread of the benchmark process (its CPU is no contender's);
alone, for trying a client against it:

    python bench/throttle.py http://127.0.0.1:MOTO_PORT [--port P] [--throttle MBPS]
"""

from __future__ import annotations

import argparse
import select
import socket
import threading
import time
from dataclasses import asdict, dataclass
from urllib.parse import parse_qs, urlsplit

CHUNK = 256 * 1024  # at 20 MB/s one chunk is 13 ms of the uplink: fine-grained enough
MAX_LINE = 65536


class Uplink:
    """A token bucket as a virtual clock: each chunk reserves its time on the line, then waits
    until that time has passed. An idle line saves up at most `burst` seconds of credit."""

    def __init__(self, mbps: float | None, burst: float = 0.05):
        self.rate = mbps * 1e6 if mbps else None  # MB/s as network people count: 10**6 bytes
        self.burst = burst
        self.free_at = 0.0
        self.lock = threading.Lock()

    def take(self, size: int) -> None:
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            self.free_at = max(self.free_at, now - self.burst) + size / self.rate
            wait = self.free_at - now
        if wait > 0:
            time.sleep(wait)


@dataclass
class Counters:
    """What went through the proxy; the benchmark takes differences around each run."""

    requests: int = 0
    up: int = 0            # request body bytes sent to the server
    down: int = 0          # response body bytes sent back to the client
    part_copies: int = 0   # UploadPartCopy: PUT ?partNumber=&uploadId= with x-amz-copy-source
    copies: int = 0        # CopyObject: PUT with x-amz-copy-source, no partNumber


class Closed(Exception):
    """The peer closed its connection where a message was expected."""


def read_head(reader) -> tuple[bytes, list[tuple[str, str]], bytes] | None:
    """The start line, the headers (name, value) and the head's raw bytes; None at a clean EOF
    between messages (a keep-alive connection the client has finished with)."""
    line = reader.readline(MAX_LINE)
    while line in (b"\r\n", b"\n"):  # stray empty lines between messages are allowed
        line = reader.readline(MAX_LINE)
    if not line:
        return None
    raw = [line]
    headers = []
    while True:
        line = reader.readline(MAX_LINE)
        if not line:
            raise Closed("connection closed inside a message head")
        raw.append(line)
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return raw[0].rstrip(b"\r\n"), headers, b"".join(raw)


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    name = name.lower()
    values = [v for k, v in headers if k.lower() == name]
    return ", ".join(values) if values else None


def tokens(headers: list[tuple[str, str]], name: str) -> set[str]:
    return {t.strip().lower() for t in (header(headers, name) or "").split(",") if t.strip()}


def copy_exact(reader, sink: socket.socket, size: int, uplink: Uplink | None) -> int:
    """Forward exactly `size` bytes, chunk by chunk, each paid for on the uplink first."""
    left = size
    while left:
        data = reader.read1(min(CHUNK, left))
        if not data:
            raise Closed("connection closed inside a body")
        if uplink:
            uplink.take(len(data))
        sink.sendall(data)
        left -= len(data)
    return size


def copy_chunked(reader, sink: socket.socket, uplink: Uplink | None) -> int:
    """Forward a chunked body as it is (sizes, data, trailers); returns the data bytes."""
    total = 0
    while True:
        line = reader.readline(MAX_LINE)
        if not line:
            raise Closed("connection closed inside a chunked body")
        sink.sendall(line)
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        total += copy_exact(reader, sink, size, uplink)
        sink.sendall(reader.readline(MAX_LINE))  # the CRLF after the chunk's data
    while True:  # trailers, then the empty line
        line = reader.readline(MAX_LINE)
        if not line:
            raise Closed("connection closed inside chunked trailers")
        sink.sendall(line)
        if line in (b"\r\n", b"\n"):
            return total


def copy_to_end(reader, sink: socket.socket) -> int:
    total = 0
    while data := reader.read1(CHUNK):
        sink.sendall(data)
        total += len(data)
    return total


def stale(sock: socket.socket) -> bool:
    """True when an idle keep-alive connection was closed by the server meanwhile."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class ThrottleProxy:
    """Listens on 127.0.0.1; one thread per client connection, each with its own connection
    to the upstream server, kept open as long as both sides keep theirs."""

    def __init__(self, upstream: str, mbps: float | None = None, port: int = 0):
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port or 80)
        self.uplink = Uplink(mbps)
        self.mbps = mbps
        self.counters = Counters()
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()
        self.listener = socket.create_server(("127.0.0.1", port))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, daemon=True, name="throttle-accept")
        self.thread.start()

    def snapshot(self) -> Counters:
        with self.lock:
            return Counters(**asdict(self.counters))

    def since(self, before: Counters) -> Counters:
        """What went through since `before` (a snapshot)."""
        now = self.snapshot()
        return Counters(**{k: v - getattr(before, k) for k, v in asdict(now).items()})

    def stop(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() a plain close() leaves blocked
        except OSError:
            pass
        self.listener.close()
        self.thread.join(5)
        with self.lock:
            sockets = list(self.open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed by stop()
            threading.Thread(target=self._serve, args=(client,), daemon=True, name="throttle-conn").start()

    def _track(self, sock: socket.socket | None, add: bool) -> None:
        if sock is None:
            return
        with self.lock:
            (self.open.add if add else self.open.discard)(sock)

    def _count(self, **amounts: int) -> None:
        with self.lock:
            for name, amount in amounts.items():
                setattr(self.counters, name, getattr(self.counters, name) + amount)

    def _serve(self, client: socket.socket) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._track(client, True)
        reader = client.makefile("rb", buffering=CHUNK)
        server = None
        try:
            while True:
                head = read_head(reader)
                if head is None:
                    return
                if server is None or stale(server[0]):
                    if server:
                        self._drop(server)
                    server = self._connect()
                if not self._exchange(head, reader, client, server):
                    return  # either side closes: the finally closes both
        except (OSError, Closed, ValueError):
            return
        finally:
            if server:
                self._drop(server)
            self._track(client, False)
            reader.close()
            client.close()

    def _connect(self):
        sock = socket.create_connection(self.upstream, timeout=300)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._track(sock, True)
        return sock, sock.makefile("rb", buffering=CHUNK)

    def _drop(self, server) -> None:
        self._track(server[0], False)
        server[1].close()
        server[0].close()

    def _exchange(self, head, reader, client: socket.socket, server) -> bool:
        """One request and its response; False when the client connection must close."""
        start, headers, _ = head
        method, target, version = start.decode("latin-1").split(" ", 2)
        query = parse_qs(urlsplit(target).query, keep_blank_values=True)
        copy_source = header(headers, "x-amz-copy-source") is not None
        self._count(requests=1, part_copies=int(method == "PUT" and copy_source and "partNumber" in query),
                    copies=int(method == "PUT" and copy_source and "partNumber" not in query))
        chunked = "chunked" in tokens(headers, "transfer-encoding")
        length = int(header(headers, "content-length") or 0)
        if "100-continue" in tokens(headers, "expect"):
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        forwarded = [start + b"\r\n"]
        forwarded += [f"{k}: {v}\r\n".encode("latin-1") for k, v in headers if k.lower() != "expect"]
        server[0].sendall(b"".join(forwarded) + b"\r\n")
        if chunked:
            sent = copy_chunked(reader, server[0], self.uplink)
        else:
            sent = copy_exact(reader, server[0], length, self.uplink)
        self._count(up=sent)
        client_closes = "close" in tokens(headers, "connection") or (
            version.strip() == "HTTP/1.0" and "keep-alive" not in tokens(headers, "connection"))
        return self._relay_response(method, server, client) and not client_closes

    def _relay_response(self, method: str, server, client: socket.socket) -> bool:
        """Forward the server's answer (interim 1xx answers dropped: the proxy answered 100
        itself); False when the connection to the client must close after it."""
        while True:
            head = read_head(server[1])
            if head is None:
                raise Closed("the server closed the connection before answering")
            start, headers, raw = head
            status = int(start.split(b" ", 2)[1])
            if not 100 <= status < 200:
                break
        client.sendall(raw)
        server_closes = "close" in tokens(headers, "connection") or (
            start.startswith(b"HTTP/1.0") and "keep-alive" not in tokens(headers, "connection"))
        if method == "HEAD" or status in (204, 304):
            received = 0
        elif "chunked" in tokens(headers, "transfer-encoding"):
            received = copy_chunked(server[1], client, None)
        elif header(headers, "content-length") is not None:
            received = copy_exact(server[1], client, int(header(headers, "content-length")), None)
        else:  # the body runs to the end of the connection
            received = copy_to_end(server[1], client)
            server_closes = True
        self._count(down=received)
        return not server_closes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("upstream", help="the S3 server's URL, e.g. http://127.0.0.1:9000")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free one)")
    parser.add_argument("--throttle", type=float, metavar="MBPS", help="upload limit in MB/s (10**6 bytes)")
    args = parser.parse_args()
    proxy = ThrottleProxy(args.upstream, args.throttle, args.port)
    print(f"listening on {proxy.url}, upstream {args.upstream}, "
          f"{f'{args.throttle} MB/s up' if args.throttle else 'no limit'}; Ctrl-C prints the counters", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()
        print(asdict(proxy.snapshot()))


if __name__ == "__main__":
    main()
