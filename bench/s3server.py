"""moto's S3 server, as the benchmark runs it: unchanged, but timing its own work on every
CompleteMultipartUpload and UploadPartCopy, for every client alike.

    python bench/s3server.py JOIN_LOG -H 127.0.0.1 -p PORT

moto joins a multipart upload by copying every part, in Python, several times over (seconds
per GiB on this machine; a real provider joins parts on its own machines). The AWS CLI pays
this as we do; restic, whose packs are small objects, never does. A part copied inside the
server (UploadPartCopy, our second night) costs moto a read of the whole source object.
Our upload line reports the join as the client sees it; this log gives the server's own
time, so the benchmark can show each contender with and without it. Each line: seconds,
bytes, wall-clock start and end, and the operation (overlapping calls count once).
"""

from __future__ import annotations

import sys
import threading
import time


def main() -> None:
    log, argv = sys.argv[1], sys.argv[2:]
    from moto.s3.models import S3Backend
    from moto.server import main as serve

    lock = threading.Lock()

    def timing(name: str, size_of):
        work = getattr(S3Backend, name)

        def timed(self, *args, **kwargs):
            started, wall = time.perf_counter(), time.time()
            result = work(self, *args, **kwargs)
            seconds = time.perf_counter() - started
            with lock, open(log, "a") as out:
                out.write(f"{seconds:.3f} {size_of(result)} {wall:.3f} {wall + seconds:.3f} {name}\n")
            return result

        setattr(S3Backend, name, timed)

    # the join, and each part copied inside the server: moto reads the whole source object
    # into memory for every UploadPartCopy, a real provider copies on its own machines
    timing("complete_multipart_upload", lambda key: key.size if key is not None else 0)
    timing("upload_part_copy", lambda part: getattr(part, "size", 0) or 0)
    serve(argv)


if __name__ == "__main__":
    main()
