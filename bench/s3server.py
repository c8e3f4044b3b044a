"""moto's S3 server, as the benchmark runs it: unchanged, but timing its own work on every
CompleteMultipartUpload, for every client alike.

    python bench/s3server.py JOIN_LOG -H 127.0.0.1 -p PORT

moto joins a multipart upload by copying every part, in Python, several times over (seconds
per GiB on this machine; a real provider joins parts on its own machines). The AWS CLI pays
this as we do; restic, whose packs are small objects, never does. Our upload line reports the
join as the client sees it; this log gives the same for the CLI, so the benchmark can show
each contender with and without the test server's join. Each line: seconds, then bytes.
"""

from __future__ import annotations

import sys
import threading
import time


def main() -> None:
    log, argv = sys.argv[1], sys.argv[2:]
    from moto.s3.models import S3Backend
    from moto.server import main as serve

    join = S3Backend.complete_multipart_upload
    lock = threading.Lock()

    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        key = join(self, *args, **kwargs)
        seconds = time.perf_counter() - started
        with lock, open(log, "a") as out:
            out.write(f"{seconds:.3f} {key.size if key is not None else 0}\n")
        return key

    S3Backend.complete_multipart_upload = timed
    serve(argv)


if __name__ == "__main__":
    main()
