"""Backup benchmark: one command, ratios against baselines measured in the same run.

    python bench/run.py [--size 200M] [--repeat 3] [--checksum none|crc32] [--throttle MBPS]
                        [--skip-restic] [--skip-second] [--skip-scale] [--skip-restore]

It generates a realistic site (bench/sitegen.py) on a throwaway MariaDB, starts moto's S3
server as its own process behind a counting proxy (bench/throttle.py, which every contender's
S3 traffic goes through), then alternates, round after round (see ORDERS), three ways to back
it up to S3, each on a fresh moto process:
  ours    `doit backup` (dump beside tar, one archive, verified upload; a fresh install each round)
  shell   mariadb-dump | zstd -T0 -3; tar | zstd -T0 -3; aws s3 cp (both files), sequential
  restic  mariadb-dump > dump.sql; restic backup dump.sql wp-content (a first backup, new repo)
For each: wall time, CPU time (all child processes), peak RSS of the process tree, bytes the
tree wrote to local disk, what ended up in S3, and what went up to it (request bodies) in how
many requests. Right after its own first backup, on the same moto, ours and restic back up
the second night (class Night: uploads rewritten, a new upload, posts and postmeta written;
undone before the next contender's first backup):
  ours    `doit backup` again on the same install (LOCAL_KEEP=2: the first archive stays, locally and in S3)
  restic  a fresh dump, then restic backup into the same repository, with its cache
with the same figures plus the UploadPartCopy requests (parts S3 copies from an object it has).
Then the machine's limit for compression (`zstd -T0 -3` over the same input), a resumed run
(S3 refuses after 3 parts, then the re-run), and the per-site overhead with 50 small sites
plus `doit list` with 200 sites. Then restores of our newest archive (the last round's second
night's, if any) into a fresh folder and database, alternating
  ours    `doit restore --site site --target DIR --database DB --force` (checksum, safe extraction)
  shell   `zstd -dc ARCHIVE | tar -x -C DIR`, then `mariadb DB < DIR/database.sql`
Medians are printed with the ratios ours/shell and ours/restic (ours/shell for restores), and
for the second night ours second/first and ours/restic.

--checksum picks the S3 checksum settings, the same for ours and the AWS CLI: `none` (default:
Content-MD5 only, what every S3-compatible provider accepts; ours S3_CHECKSUM=none, the CLI
with checksums `when_required`) or `crc32` (ours S3_CHECKSUM=crc32, the CLI at its own
default, CRC32). restic is the same in both.

--throttle MBPS limits what goes up to S3 to MBPS MB/s (10**6 bytes a second), one token
bucket shared by every connection, as one uplink: every S3 figure (first backups, second
night, resume, scale) is then measured through it. Without it the proxy only counts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bench import sitegen  # noqa: E402
from bench.sitegen import database_sql, parse_size, write_site  # noqa: E402
from bench.throttle import ThrottleProxy  # noqa: E402
from tests.faults import S3Proxy  # noqa: E402
from tests.servers import MariaDB, free_port  # noqa: E402

KEY, SECRET = "bench-key", "bench-secret"
# The order of the contenders, round after round: the first three rounds form a Latin square
# (each contender once in each position), the next three reverse it, so over six rounds each
# contender also follows each other one once. The position showed through otherwise: restic
# burns both cores for 20 s, and a run after two big ones was measured 10-20% slower.
ORDERS = (("ours", "shell", "restic"), ("shell", "restic", "ours"), ("restic", "ours", "shell"),
          ("ours", "restic", "shell"), ("restic", "shell", "ours"), ("shell", "ours", "restic"))
PAUSE = 5.0
NIGHT_UPLOADS, NIGHT_NEW, NIGHT_POSTS = 20, 5 << 20, 20  # what the second night changes (issue 18)


class Sampler(threading.Thread):
    """Peak RSS and bytes written of a process and all its descendants, every 20 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop, self.peak, self.written = pid, threading.Event(), 0, {}

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                    self.written[proc.pid] = max(self.written.get(proc.pid, 0), proc.io_counters().write_bytes)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.02)


def measure(argv, env=None, cwd=None, check=True) -> dict:
    """Run a command; wall, CPU (children), peak RSS and bytes written of its whole tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    output, _ = proc.communicate()
    wall = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if check and proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {argv}\n{output[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "rss": sampler.peak, "written": sum(sampler.written.values()),
            "output": output, "code": proc.returncode}


class MotoProcess:
    """moto's S3 server as its own process, on a port that stays the same across restarts."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()

    def start(self) -> None:
        fd, name = tempfile.mkstemp(prefix="wpb-bench-joins-")
        os.close(fd)
        self.joins = Path(name)
        self.proc = subprocess.Popen([sys.executable, str(HERE / "s3server.py"), str(self.joins), "-H", "127.0.0.1",
                                      "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import urllib.request

        for _ in range(200):
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("moto_server did not start")

    def fresh(self) -> None:
        """A new server process with an empty bucket: no contender inherits the memory and
        the spooled files of the one before (the order of runs showed through otherwise)."""
        self.stop()
        self.start()
        self.client().create_bucket(Bucket="bench")

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET, config=Config(s3={"addressing_style": "path"}))

    def stored(self, prefix: str) -> int:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix)
        return sum(o["Size"] for page in pages for o in page.get("Contents", []))

    def joined(self) -> float:
        """Seconds the server spent joining multipart uploads and copying parts since it
        started (bench/s3server.py), calls that overlapped (parallel copies) counted once."""
        spans = sorted((float(f[2]), float(f[3])) for f in
                       (line.split() for line in self.joins.read_text().splitlines()) if len(f) >= 4)
        total, end = 0.0, float("-inf")
        for start, stop in spans:
            if stop > end:
                total += stop - max(start, end)
                end = stop
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self.joins.unlink(missing_ok=True)


def doit(*args: str) -> list[str]:
    return [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args]


def make_install(folder: Path, sites: list[dict], env: dict[str, str]) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    (folder / "sites.json").write_text(json.dumps({"sites": sites}))
    return {**os.environ, "WPBACKUP_ENV": str(folder / ".env"), "PYTHONUNBUFFERED": "1"}


class Night:
    """The second night's changes: NIGHT_UPLOADS of the site's uploads rewritten with new
    content (the same ones every time, same size), one new upload of NIGHT_NEW bytes and
    NIGHT_POSTS posts with their postmeta rows. Applied before a contender's second backup and
    undone after it, so every first backup sees the same site: the rewritten uploads stay
    rewritten (random bytes of the same sizes either way), the new upload and rows go."""

    def __init__(self, site: Path, mariadb: MariaDB):
        self.site, self.mariadb = site, mariadb
        self.changed = sitegen.pick_uploads(site, NIGHT_UPLOADS)
        self.changed_bytes = sum(p.stat().st_size for p in self.changed)
        self.last_post = int(mariadb.sql("SELECT MAX(ID) FROM wp_posts", database="bench"))
        self.last_meta = int(mariadb.sql("SELECT MAX(meta_id) FROM wp_postmeta", database="bench"))
        self.new_upload = site / "wp-content" / "uploads" / time.strftime("%Y/%m") / "night-upload.jpg"
        self.made: list[Path] = []  # folders apply() created, for undo() to remove

    def apply(self) -> None:
        sitegen.rewrite_files(self.changed)
        self.made = [p for p in reversed(self.new_upload.parents) if not p.exists()]
        self.new_upload.parent.mkdir(parents=True, exist_ok=True)
        sitegen.write_random(self.new_upload, NIGHT_NEW)
        self.mariadb.sql(sitegen.night_sql(self.last_post, NIGHT_POSTS), database="bench")

    def undo(self) -> None:
        self.new_upload.unlink(missing_ok=True)
        for folder in reversed(self.made):
            folder.rmdir()
        self.made = []
        self.mariadb.sql(sitegen.undo_night_sql(self.last_post, self.last_meta), database="bench")

    def describe(self) -> str:
        return (f"{len(self.changed)} uploads rewritten ({self.changed_bytes / 2**20:.1f} MiB), one new upload of "
                f"{NIGHT_NEW / 2**20:.0f} MiB, {NIGHT_POSTS} posts with {NIGHT_POSTS * 3} postmeta rows")


@dataclass
class Bench:
    """What every contender's run needs: the site, the servers and the commands around them."""

    args: argparse.Namespace
    base: Path
    site: Path
    mariadb: MariaDB
    moto: MotoProcess
    proxy: ThrottleProxy
    dump_cmd: str
    aws_env: dict
    night: Night | None
    ours_dir: Path | None = None  # this round's install of ours
    ours_env: dict | None = None


def settle() -> None:
    """Before every timed run: the previous run's dirty pages written out, then a pause."""
    subprocess.run("sync", shell=True)
    time.sleep(PAUSE)


def timed(bench: Bench, argv: list[str], env: dict) -> dict:
    """measure(), plus what went through the counting proxy and moto's join meanwhile."""
    before, joined = bench.proxy.snapshot(), bench.moto.joined()
    result = measure(argv, env=env)
    sent = bench.proxy.since(before)
    result.update(sent=sent.up, down=sent.down, requests=sent.requests, part_copies=sent.part_copies,
                  join=bench.moto.joined() - joined)
    return result


def new_ours_install(bench: Bench, i: int) -> None:
    """A fresh install for each round (its first backup is a first one: no earlier archive,
    catalog or run to build on); the previous round's goes, untimed. LOCAL_KEEP=2 keeps the
    first night's archive beside the second's, as a real install keeps yesterday's."""
    for old in bench.base.glob("ours-*"):
        shutil.rmtree(old)
    bench.ours_dir = bench.base / f"ours-{i}"
    bench.ours_env = make_install(bench.ours_dir, [{"name": "site", "path": str(bench.site)}], {
        "SERVER_ID": "bench", "LOCAL_KEEP": "2", "S3_ENDPOINT_URL": bench.proxy.url, "S3_BUCKET": "bench",
        "S3_ACCESS_KEY_ID": KEY, "S3_SECRET_ACCESS_KEY": SECRET, "S3_CHECKSUM": bench.args.checksum})


def run_ours(bench: Bench) -> dict:
    result = timed(bench, doit("backup"), bench.ours_env)
    archive = max((bench.ours_dir / "backups").glob("*.tar.zst"))  # the stamp in the name: the newest
    result["stored"] = bench.moto.stored("bench/")
    result["archive"] = archive.stat().st_size
    joined = re.search(r"\(([\d.]+)s of it the provider joining the parts\)", result["output"])
    result["assembly"] = float(joined.group(1)) if joined else 0.0
    upload = re.search(r"uploaded to s3://\S+ and verified.*? in ([\d.]+)s", result["output"])
    result["upload"] = float(upload.group(1)) if upload else None
    dumped = re.search(r"dumped, .*? in ([\d.]+)s", result["output"])
    archived = re.search(r"\) archived in ([\d.]+)s", result["output"])
    if dumped and archived:  # side by side: the archive waits for the longer of the two
        result["phases"] = {"dump": float(dumped.group(1)), "tar": float(archived.group(1))}
    return result


def run_shell(bench: Bench) -> dict:
    shell_dir = bench.base / "shell"
    shutil.rmtree(shell_dir, ignore_errors=True)
    shell_dir.mkdir()
    url = bench.proxy.url
    marks = shell_dir / "marks"
    mark = f"date +%s.%N >> {marks}"  # when each of the three steps ended
    script = (f"set -eo pipefail; {mark}; {bench.dump_cmd} | zstd -q -T0 -3 > {shell_dir}/db.sql.zst; {mark}; "
              f"tar -C {bench.site} -cf - wp-content | zstd -q -T0 -3 > {shell_dir}/files.tar.zst; {mark}; "
              f"for f in db.sql.zst files.tar.zst; do aws --endpoint-url {url} s3 cp "
              f"--only-show-errors {shell_dir}/$f s3://bench/shell/$f; done; {mark}")
    result = timed(bench, ["bash", "-c", script], bench.aws_env)
    result["stored"] = result["archive"] = bench.moto.stored("shell/")
    at = [float(line) for line in marks.read_text().split()]
    if len(at) == 4:
        result["phases"] = {"dump": at[1] - at[0], "tar": at[2] - at[1], "upload": at[3] - at[2]}
    return result


def run_restic(bench: Bench, first: bool) -> dict:
    """The first backup makes a new repository; the second backs up into the same one, with
    its cache, from a fresh dump."""
    work = bench.base / "restic"
    if first:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
    repo = f"s3:{bench.proxy.url}/bench/restic"
    init = f"restic -q -r {repo} init >/dev/null; " if first else ""
    script = (f"set -eo pipefail; {bench.dump_cmd} > {work}/dump.sql; {init}"
              f"restic -q -r {repo} --cache-dir {work}/cache backup {work}/dump.sql {bench.site}/wp-content")
    result = timed(bench, ["bash", "-c", script], bench.aws_env)
    result["stored"] = result["archive"] = bench.moto.stored("restic/")
    return result


def contender(bench: Bench, i: int, who: str) -> tuple[dict, dict | None]:
    """One contender's first backup on a fresh moto and, for ours and restic, its second
    night right after it, on the same moto (the same bucket, repository, install)."""
    bench.moto.fresh()
    if who == "ours":
        new_ours_install(bench, i)
    settle()
    run = {"ours": lambda first: run_ours(bench), "shell": lambda first: run_shell(bench),
           "restic": lambda first: run_restic(bench, first)}[who]
    first = run(True)
    second = None
    if bench.night and who != "shell":
        bench.night.apply()
        try:
            settle()
            second = run(False)
        finally:
            bench.night.undo()
    return first, second


def run_line(label: str, result: dict) -> str:
    return (f"{label}: {result['wall']:6.2f}s wall ({result['join']:5.2f}s of it moto joining parts), "
            f"{result['cpu']:6.2f}s cpu, {result['rss'] / 2**20:5.0f} MiB, wrote {result['written'] / 2**20:6.0f} MiB, "
            f"sent {result['sent'] / 2**20:7.1f} MiB in {result['requests']} requests "
            f"({result['part_copies']} UploadPartCopy), stored {result['stored'] / 2**20:6.0f} MiB")


def main() -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="200M", help="site size, e.g. 200M or 2G")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--checksum", choices=("none", "crc32"), default="none",
                        help="S3 checksum settings for ours and the AWS CLI alike (see above)")
    parser.add_argument("--throttle", type=float, metavar="MBPS",
                        help="limit what goes up to S3 to MBPS MB/s (10**6 bytes), shared by all connections")
    parser.add_argument("--skip-restic", action="store_true")
    parser.add_argument("--skip-second", action="store_true", help="leave the second night out")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-restore", action="store_true")
    args = parser.parse_args()
    size = parse_size(args.size)
    base = Path(tempfile.mkdtemp(prefix="wpb-bench-"))
    mariadb, moto = MariaDB(), MotoProcess()
    proxy = ThrottleProxy(moto.url, args.throttle)  # moto keeps its port across restarts
    dump_cmd = (f"mariadb-dump --no-defaults -h127.0.0.1 -P{mariadb.port} -ubench -pbenchpass "
                "--single-transaction --quick --routines --triggers --hex-blob bench")
    # The CLI gets the same checksum settings as ours. With none declared, moto builds a
    # whole-object checksum when a multipart upload completes, copying every byte again (a
    # cost of the test server, not of S3); with CRC32 declared it combines the parts' CRCs.
    aws_env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
               "AWS_DEFAULT_REGION": "us-east-1", "RESTIC_PASSWORD": "bench"}
    if args.checksum == "none":
        aws_env.update(AWS_REQUEST_CHECKSUM_CALCULATION="when_required",
                       AWS_RESPONSE_CHECKSUM_VALIDATION="when_required")
    rows: dict[str, list[dict]] = {"ours": [], "shell": [], "restic": []}
    seconds: dict[str, list[dict]] = {"ours": [], "restic": []}
    try:
        t = time.perf_counter()
        mariadb.sql("CREATE DATABASE bench CHARACTER SET utf8mb4; CREATE USER 'bench'@'127.0.0.1' "
                    "IDENTIFIED BY 'benchpass'; GRANT ALL ON *.* TO 'bench'@'127.0.0.1';")
        mariadb.sql(database_sql(size // 10), database="bench")
        site = base / "site"
        write_site(site, size, f"127.0.0.1:{mariadb.port}", "bench", "bench", "benchpass")
        raw_dump = len(subprocess.run(dump_cmd, shell=True, capture_output=True).stdout)
        print(f"generated {args.size} in {time.perf_counter() - t:.0f}s (dump {raw_dump / 2**20:.0f} MiB)", flush=True)
        night = None if args.skip_second else Night(site, mariadb)
        bench = Bench(args, base, site, mariadb, moto, proxy, dump_cmd, aws_env, night)
        for i in range(args.repeat):
            for who in ORDERS[i % len(ORDERS)]:
                if who == "restic" and args.skip_restic:
                    continue
                first, second = contender(bench, i, who)
                rows[who].append(first)
                print(run_line(f"round {i + 1} {who:6}", first), flush=True)
                if second:
                    seconds[who].append(second)
                    print(run_line(f"round {i + 1} {who:6} second night", second), flush=True)

        restores = [] if args.skip_restore else restore_runs(bench, args.repeat)
        # the machine's limit: zstd -T0 -3 over the same input (files tar + dump), to /dev/null
        limit = measure(["bash", "-c", f"set -o pipefail; ( tar -C {site} -cf - wp-content; {dump_cmd} ) "
                                       "| zstd -q -T0 -3 > /dev/null"])
        resumed = resume_run(bench)
        scale = None if args.skip_scale else scale_runs(bench)
    finally:
        proxy.stop()
        moto.stop()
        mariadb.stop()
        shutil.rmtree(base, ignore_errors=True)
    report(args, rows, seconds, night, size, raw_dump, limit, resumed, scale, restores)


def restore_runs(bench: Bench, repeat: int) -> list[tuple[dict, dict]]:
    """Our restore against zstd | tar then mariadb, alternating, from the same archive (the
    last round's newest: its second night's when there was one)."""
    base, env, mariadb = bench.base, bench.ours_env, bench.mariadb
    archive = max((bench.ours_dir / "backups").glob("*.tar.zst"))
    results = []
    for i in range(repeat):
        ours_dir, shell_dir = base / f"restore-ours-{i}", base / f"restore-shell-{i}"
        mariadb.sql(f"CREATE DATABASE r_ours_{i}; CREATE DATABASE r_shell_{i}")
        subprocess.run("sync", shell=True)
        ours = measure(doit("restore", "--site", "site", "--target", str(ours_dir), "--database", f"r_ours_{i}",
                            "--force"), env=env)
        shell_dir.mkdir()
        subprocess.run("sync", shell=True)
        shell = measure(["bash", "-c", f"set -eo pipefail; zstd -dc {archive} | tar -x -C {shell_dir}; "
                                       f"mariadb --no-defaults -h127.0.0.1 -P{mariadb.port} -ubench -pbenchpass "
                                       f"r_shell_{i} < {shell_dir}/database.sql"])
        print(f"restore {i + 1}: ours {ours['wall']:.2f}s {ours['rss'] / 2**20:.0f} MiB, shell {shell['wall']:.2f}s",
              flush=True)
        results.append((ours, shell))
        shutil.rmtree(ours_dir, ignore_errors=True)
        shutil.rmtree(shell_dir, ignore_errors=True)
    return results


def resume_run(bench: Bench) -> dict:
    """S3 refuses after 3 parts; then the re-run. What did the re-run redo, and send again?
    The refusing proxy sits in front of the counting one (and its limit, if any)."""
    bench.moto.fresh()
    proxy = S3Proxy(bench.proxy.url)
    proxy.mode, proxy.after_parts = "refuse", 3
    folder = bench.base / "resume"
    env = make_install(folder, [{"name": "site", "path": str(bench.site)}], {
        "SERVER_ID": "bench", "S3_ENDPOINT_URL": proxy.url, "S3_BUCKET": "bench", "S3_ACCESS_KEY_ID": KEY,
        "S3_SECRET_ACCESS_KEY": SECRET, "S3_MAX_ATTEMPTS": "1", "S3_PART_SIZE_MB": "5",
        "S3_CHECKSUM": bench.args.checksum})
    try:
        first = measure(doit("backup"), env=env, check=False)
        proxy.mode = "pass"
        before = bench.proxy.snapshot()
        second = measure(doit("backup"), env=env)
        second["sent"] = bench.proxy.since(before).up
    finally:
        proxy.stop()
    import sqlite3

    with sqlite3.connect(folder / "backups.db") as conn:
        def count(like: str) -> int:
            return conn.execute("SELECT COUNT(*) FROM backup_log WHERE details LIKE ?", (like,)).fetchone()[0]
        info = {"dumps": count("database % dumped%"), "tars": count("% files % archived%"),
                "archives": count("archive % written%"), "resumed": conn.execute(
                    "SELECT details FROM backup_log WHERE details LIKE '%parts resumed%'").fetchone()}
    return {"first": first, "second": second, **info}


def scale_runs(bench: Bench) -> dict:
    """50 small sites in one run (local-only, then to S3), and `doit list` with 200 sites."""
    base, mariadb = bench.base, bench.mariadb
    mariadb.sql("CREATE DATABASE small CHARACTER SET utf8mb4")
    mariadb.sql("CREATE TABLE wp_posts (ID INT PRIMARY KEY, post_title TEXT); "
                "INSERT INTO wp_posts SELECT seq, CONCAT('post ', seq) FROM seq_1_to_50;", database="small")
    sites = []
    for n in range(200):
        root = base / "small" / f"s{n}"
        (root / "wp-content" / "uploads").mkdir(parents=True)
        (root / "wp-content" / "uploads" / "a.txt").write_text("hello " * 100)
        (root / "wp-config.php").write_text(
            f"<?php define('DB_NAME','small'); define('DB_USER','bench'); define('DB_PASSWORD','benchpass');"
            f" define('DB_HOST','127.0.0.1:{mariadb.port}'); $table_prefix = 'wp_';\n")
        sites.append({"name": f"site{n:03d}", "path": str(root)})
    env50 = make_install(base / "scale50", sites[:50], {"SERVER_ID": "bench"})
    fifty = measure(doit("backup"), env=env50)
    env1 = make_install(base / "scale1", sites[:1], {"SERVER_ID": "bench"})
    one = measure(doit("backup"), env=env1)
    to_s3 = {"SERVER_ID": "bench", "S3_ENDPOINT_URL": bench.proxy.url, "S3_BUCKET": "bench",
             "S3_ACCESS_KEY_ID": KEY, "S3_SECRET_ACCESS_KEY": SECRET}
    bench.moto.fresh()
    fifty_s3 = measure(doit("backup"), env=make_install(base / "scale50s3", sites[:50], to_s3))
    one_s3 = measure(doit("backup"), env=make_install(base / "scale1s3", sites[:1], to_s3))
    env200 = make_install(base / "scale200", sites, {"SERVER_ID": "bench"})
    listing = measure(doit("list", "--all"), env=env200)
    return {"fifty": fifty["wall"], "one": one["wall"], "list200": listing["wall"], "fifty_s3": fifty_s3["wall"],
            "one_s3": one_s3["wall"]}


FIELDS = ("wall", "cpu", "rss", "written", "stored", "archive", "join", "sent", "requests", "part_copies")


def medians(rows: dict[str, list[dict]]) -> dict[str, dict]:
    """Per contender, the median of each figure over the rounds; "client" is wall less join."""
    med = statistics.median
    out = {}
    for who, results in rows.items():
        if results:
            out[who] = {k: med(r[k] for r in results) for k in FIELDS}
            out[who]["client"] = med(r["wall"] - r["join"] for r in results)
    return out


def print_phases(rows: dict[str, list[dict]]) -> None:
    """Where the first backup's time goes: ours dumps beside tar, then appends the dump and
    uploads (S3 wants the sha256 metadata when the upload starts); the shell runs its three
    steps one after the other."""
    med = statistics.median
    ours = [r for r in rows.get("ours", []) if r.get("phases") and r.get("upload") is not None]
    if ours:
        print(f"ours phases: dump {med(r['phases']['dump'] for r in ours):.2f}s beside tar "
              f"{med(r['phases']['tar'] for r in ours):.2f}s; upload {med(r['upload'] for r in ours):.2f}s "
              f"({med(r['upload'] - r.get('assembly', 0.0) for r in ours):.2f}s without moto's join)")
    shell = [r for r in rows.get("shell", []) if r.get("phases")]
    if shell:
        print(f"shell phases, one after the other: dump|zstd {med(r['phases']['dump'] for r in shell):.2f}s, "
              f"tar|zstd {med(r['phases']['tar'] for r in shell):.2f}s, aws s3 cp "
              f"{med(r['phases']['upload'] for r in shell):.2f}s "
              f"({med(r['phases']['upload'] - r['join'] for r in shell):.2f}s without moto's join)")


def report(args, rows, seconds, night, size, raw_dump, limit, resumed, scale, restores) -> None:
    med = statistics.median
    uplink = f"uplink limited to {args.throttle:g} MB/s" if args.throttle else "uplink not limited"
    print(f"\nmachine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; "
          f"site {args.size}; moto S3 in its own process behind a counting proxy, {uplink}; "
          f"S3 checksum {args.checksum}; medians of {args.repeat}")
    print("first backup")
    print(f"{'':8}{'wall s':>8}{'join s':>8}{'w-j s':>8}{'cpu s':>8}{'RSS MiB':>9}{'wrote MiB':>11}"
          f"{'in S3 MiB':>11}{'sent MiB':>10}{'reqs':>6}")
    first = medians(rows)
    for who, m in first.items():
        print(f"{who:8}{m['wall']:8.2f}{m['join']:8.2f}{m['client']:8.2f}{m['cpu']:8.2f}{m['rss'] / 2**20:9.0f}"
              f"{m['written'] / 2**20:11.0f}{m['stored'] / 2**20:11.1f}{m['sent'] / 2**20:10.1f}{m['requests']:6.0f}")
    print("join: moto's own time joining multipart uploads and copying parts (bench/s3server.py); "
          "w-j: wall without it; sent: request bodies that went up through the proxy")
    ours = first["ours"]
    assembly = med(r.get("assembly", 0.0) for r in rows["ours"])
    if assembly:
        print(f"ours: CompleteMultipartUpload took {assembly:.2f}s (median) as our upload line reports it")
    uploads = [r["upload"] for r in rows["ours"] if r.get("upload") is not None]
    if uploads:
        ready = med(r["wall"] - r["upload"] for r in rows["ours"] if r.get("upload") is not None)
        print(f"ours: archive ready after ~{ready:.2f}s (wall less the upload line's time), upload done after "
              f"{med(uploads):.2f}s more, of {ours['wall']:.2f}s in all")
    print_phases(rows)
    for other in ("shell", "restic"):
        if other in first:
            print(f"ours/{other}: wall {ours['wall'] / first[other]['wall']:.2f}, "
                  f"wall without moto's join {ours['client'] / first[other]['client']:.2f}, "
                  f"cpu {ours['cpu'] / first[other]['cpu']:.2f}, "
                  f"stored {ours['stored'] / first[other]['stored']:.3f}")
    if any(seconds.values()):
        second_report(night, ours, medians(seconds))
    input_bytes = size * 9 // 10 + raw_dump
    print(f"machine limit: zstd -T0 -3 over the same input {limit['wall']:.2f}s "
          f"({input_bytes / limit['wall'] / 2**20:.0f} MiB/s); ours {input_bytes / ours['wall'] / 2**20:.0f} MiB/s "
          f"= {limit['wall'] / ours['wall']:.2f} of the limit")
    print(f"extra local disk: ours wrote {ours['written'] / 2**20:.0f} MiB; archive + raw dump = "
          f"{(ours['archive'] + raw_dump) / 2**20:.0f} MiB")
    r = resumed
    print(f"resume: first run (S3 refuses after 3 parts) {r['first']['wall']:.2f}s exit {r['first']['code']}; "
          f"re-run {r['second']['wall']:.2f}s, sent {r['second']['sent'] / 2**20:.1f} MiB; dumps {r['dumps']}, "
          f"tar passes {r['tars']}, archives {r['archives']} over both runs; "
          f"{r['resumed'][0] if r['resumed'] else 'no parts resumed'}")
    if restores:
        ours_wall = med(o["wall"] for o, _ in restores)
        shell_wall = med(s["wall"] for _, s in restores)
        print(f"restore: ours {ours_wall:.2f}s (peak RSS {med(o['rss'] for o, _ in restores) / 2**20:.0f} MiB), "
              f"zstd|tar + mariadb {shell_wall:.2f}s, ratio {ours_wall / shell_wall:.2f}")
    if scale:
        print(f"scale: 50 small sites {scale['fifty']:.2f}s ({(scale['fifty'] - scale['one']) / 49:.2f}s per extra "
              f"site; one site alone {scale['one']:.2f}s); to S3 {scale['fifty_s3']:.2f}s "
              f"({(scale['fifty_s3'] - scale['one_s3']) / 49:.2f}s per extra site; "
              f"one site alone {scale['one_s3']:.2f}s); doit list --all with 200 sites {scale['list200']:.2f}s")


def second_report(night: Night, ours_first: dict, second: dict[str, dict]) -> None:
    """The second night's table and its ratios; sent % is of our first (full) archive."""
    full = ours_first["archive"]
    print(f"\nsecond night ({night.describe()}), each right after its own first backup")
    print(f"{'':8}{'wall s':>8}{'join s':>8}{'w-j s':>8}{'cpu s':>8}{'RSS MiB':>9}{'sent MiB':>10}"
          f"{'sent %':>8}{'reqs':>6}{'copies':>8}{'in S3 MiB':>11}")
    for who, m in second.items():
        print(f"{who:8}{m['wall']:8.2f}{m['join']:8.2f}{m['client']:8.2f}{m['cpu']:8.2f}{m['rss'] / 2**20:9.0f}"
              f"{m['sent'] / 2**20:10.1f}{100 * m['sent'] / full:8.1f}{m['requests']:6.0f}{m['part_copies']:8.0f}"
              f"{m['stored'] / 2**20:11.1f}")
    print(f"sent %: of our full archive ({full / 2**20:.1f} MiB); copies: UploadPartCopy requests; "
          "in S3: all of the contender's objects after both nights")
    if "ours" in second:
        ours = second["ours"]
        print(f"ours second/first: wall {ours['wall'] / ours_first['wall']:.2f}, "
              f"wall without moto's join {ours['client'] / ours_first['client']:.2f}, "
              f"sent {ours['sent'] / ours_first['sent']:.3f}")
        if "restic" in second:
            restic = second["restic"]
            print(f"ours/restic second night: wall {ours['wall'] / restic['wall']:.2f}, "
                  f"wall without moto's join {ours['client'] / restic['client']:.2f}, "
                  f"cpu {ours['cpu'] / restic['cpu']:.2f}, sent {ours['sent'] / restic['sent']:.2f}")


if __name__ == "__main__":
    main()
