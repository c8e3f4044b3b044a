"""Backup benchmark: one command, ratios against baselines measured in the same run.

    python bench/run.py [--size 200M] [--repeat 3] [--checksum none|crc32]
                        [--skip-restic] [--skip-scale] [--skip-restore]

It generates a realistic site (bench/sitegen.py) on a throwaway MariaDB, starts moto's S3
server as its own process, then alternates, round after round (see ORDERS), three ways to back
it up to S3, each on a fresh moto process:
  ours    `doit backup` (dump beside tar, one archive, verified upload)
  shell   mariadb-dump | zstd -T0 -3; tar | zstd -T0 -3; aws s3 cp (both files), sequential
  restic  mariadb-dump > dump.sql; restic backup dump.sql wp-content (a first backup, new repo)
For each: wall time, CPU time (all child processes), peak RSS of the process tree, bytes the
tree wrote to local disk, and what ended up in S3. Then the machine's limit for compression
(`zstd -T0 -3` over the same input), a resumed run (S3 refuses after 3 parts, then the
re-run), and the per-site overhead with 50 small sites plus `doit list` with 200 sites.
Then restores of our newest archive into a fresh folder and database, alternating
  ours    `doit restore --site site --target DIR --database DB --force` (checksum, safe extraction)
  shell   `zstd -dc ARCHIVE | tar -x -C DIR`, then `mariadb DB < DIR/database.sql`
Medians are printed with the ratios ours/shell and ours/restic (ours/shell for restores).

--checksum picks the S3 checksum settings, the same for ours and the AWS CLI: `none` (default:
Content-MD5 only, what every S3-compatible provider accepts; ours S3_CHECKSUM=none, the CLI
with checksums `when_required`) or `crc32` (ours S3_CHECKSUM=crc32, the CLI at its own
default, CRC32). restic is the same in both.
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
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from bench.sitegen import database_sql, parse_size, write_site  # noqa: E402
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
        """Seconds the server spent joining multipart uploads since it started (bench/s3server.py)."""
        return sum(float(line.split()[0]) for line in self.joins.read_text().splitlines() if line.strip())

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


def main() -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="200M", help="site size, e.g. 200M or 2G")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--checksum", choices=("none", "crc32"), default="none",
                        help="S3 checksum settings for ours and the AWS CLI alike (see above)")
    parser.add_argument("--skip-restic", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-restore", action="store_true")
    args = parser.parse_args()
    size = parse_size(args.size)
    base = Path(tempfile.mkdtemp(prefix="wpb-bench-"))
    mariadb, moto = MariaDB(), MotoProcess()
    db = f"127.0.0.1:{mariadb.port}"
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
    try:
        t = time.perf_counter()
        mariadb.sql("CREATE DATABASE bench CHARACTER SET utf8mb4; CREATE USER 'bench'@'127.0.0.1' "
                    "IDENTIFIED BY 'benchpass'; GRANT ALL ON *.* TO 'bench'@'127.0.0.1';")
        mariadb.sql(database_sql(size // 10), database="bench")
        site = base / "site"
        write_site(site, size, db, "bench", "bench", "benchpass")
        raw_dump = len(subprocess.run(dump_cmd, shell=True, capture_output=True).stdout)
        print(f"generated {args.size} in {time.perf_counter() - t:.0f}s (dump {raw_dump / 2**20:.0f} MiB)", flush=True)
        env = make_install(base / "ours", [{"name": "site", "path": str(site)}], {
            "SERVER_ID": "bench", "LOCAL_KEEP": "1", "S3_ENDPOINT_URL": moto.url, "S3_BUCKET": "bench",
            "S3_ACCESS_KEY_ID": KEY, "S3_SECRET_ACCESS_KEY": SECRET, "S3_CHECKSUM": args.checksum})
        shell_dir = base / "shell"
        for i in range(args.repeat):
            order = ORDERS[i % len(ORDERS)]
            for who in order:
                if who == "restic" and args.skip_restic:
                    continue
                moto.fresh()
                subprocess.run("sync", shell=True)
                time.sleep(PAUSE)
                if who == "ours":
                    for old in (base / "ours" / "backups").glob("site-backup-*"):
                        old.unlink()  # as the shell's and restic's folders are emptied: nobody times its cleanup
                    result = measure(doit("backup"), env=env)
                    archive = max((base / "ours" / "backups").glob("*.tar.zst"))
                    result["stored"] = moto.stored("bench/")
                    result["archive"] = archive.stat().st_size
                    joined = re.search(r"\(([\d.]+)s of it the provider joining the parts\)", result["output"])
                    result["assembly"] = float(joined.group(1)) if joined else 0.0
                elif who == "shell":
                    shutil.rmtree(shell_dir, ignore_errors=True)
                    shell_dir.mkdir()
                    script = (f"set -eo pipefail; {dump_cmd} | zstd -q -T0 -3 > {shell_dir}/db.sql.zst; "
                              f"tar -C {site} -cf - wp-content | zstd -q -T0 -3 > {shell_dir}/files.tar.zst; "
                              f"for f in db.sql.zst files.tar.zst; do aws --endpoint-url {moto.url} s3 cp "
                              f"--only-show-errors {shell_dir}/$f s3://bench/shell/$f; done")
                    result = measure(["bash", "-c", script], env=aws_env)
                    result["stored"] = moto.stored("shell/")
                    result["archive"] = result["stored"]
                else:
                    work = base / "restic"
                    shutil.rmtree(work, ignore_errors=True)
                    work.mkdir()
                    repo = f"s3:{moto.url}/bench/restic"
                    script = (f"set -eo pipefail; {dump_cmd} > {work}/dump.sql; "
                              f"restic -q -r {repo} init >/dev/null; "
                              f"restic -q -r {repo} --cache-dir {work}/cache backup {work}/dump.sql "
                              f"{site}/wp-content")
                    result = measure(["bash", "-c", script], env=aws_env)
                    result["stored"] = moto.stored("restic/")
                    result["archive"] = result["stored"]
                result["join"] = moto.joined()
                rows[who].append(result)
                print(f"round {i + 1} {who:6}: {result['wall']:6.2f}s wall ({result['join']:5.2f}s of it moto joining "
                      f"parts), {result['cpu']:6.2f}s cpu, "
                      f"{result['rss'] / 2**20:5.0f} MiB, wrote {result['written'] / 2**20:6.0f} MiB, "
                      f"stored {result['stored'] / 2**20:6.0f} MiB", flush=True)

        restores = [] if args.skip_restore else restore_runs(base, env, mariadb, args.repeat)
        # the machine's limit: zstd -T0 -3 over the same input (files tar + dump), to /dev/null
        limit = measure(["bash", "-c", f"set -o pipefail; ( tar -C {site} -cf - wp-content; {dump_cmd} ) "
                                       "| zstd -q -T0 -3 > /dev/null"])
        resumed = resume_run(base, site, moto, args.checksum)
        scale = None if args.skip_scale else scale_runs(base, mariadb, moto)
    finally:
        moto.stop()
        mariadb.stop()
        shutil.rmtree(base, ignore_errors=True)
    report(args, rows, size, raw_dump, limit, resumed, scale, restores)


def restore_runs(base: Path, env: dict, mariadb: MariaDB, repeat: int) -> list[tuple[dict, dict]]:
    """Our restore against zstd | tar then mariadb, alternating, from the same archive."""
    archive = max((base / "ours" / "backups").glob("*.tar.zst"))
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


def resume_run(base: Path, site: Path, moto: MotoProcess, checksum: str) -> dict:
    """S3 refuses after 3 parts; then the re-run. What did the re-run redo?"""
    moto.fresh()
    proxy = S3Proxy(moto.url)
    proxy.mode, proxy.after_parts = "refuse", 3
    folder = base / "resume"
    env = make_install(folder, [{"name": "site", "path": str(site)}], {
        "SERVER_ID": "bench", "S3_ENDPOINT_URL": proxy.url, "S3_BUCKET": "bench", "S3_ACCESS_KEY_ID": KEY,
        "S3_SECRET_ACCESS_KEY": SECRET, "S3_MAX_ATTEMPTS": "1", "S3_PART_SIZE_MB": "5",
        "S3_CHECKSUM": checksum})
    try:
        first = measure(doit("backup"), env=env, check=False)
        proxy.mode = "pass"
        second = measure(doit("backup"), env=env)
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


def scale_runs(base: Path, mariadb: MariaDB, moto: MotoProcess) -> dict:
    """50 small sites in one run (local-only, then to S3), and `doit list` with 200 sites."""
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
    to_s3 = {"SERVER_ID": "bench", "S3_ENDPOINT_URL": moto.url, "S3_BUCKET": "bench", "S3_ACCESS_KEY_ID": KEY,
             "S3_SECRET_ACCESS_KEY": SECRET}
    moto.fresh()
    fifty_s3 = measure(doit("backup"), env=make_install(base / "scale50s3", sites[:50], to_s3))
    one_s3 = measure(doit("backup"), env=make_install(base / "scale1s3", sites[:1], to_s3))
    env200 = make_install(base / "scale200", sites, {"SERVER_ID": "bench"})
    listing = measure(doit("list", "--all"), env=env200)
    return {"fifty": fifty["wall"], "one": one["wall"], "list200": listing["wall"], "fifty_s3": fifty_s3["wall"],
            "one_s3": one_s3["wall"]}


def report(args, rows, size, raw_dump, limit, resumed, scale, restores) -> None:
    med = statistics.median
    print(f"\nmachine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; "
          f"site {args.size}; moto S3 in its own process; S3 checksum {args.checksum}; medians of {args.repeat}")
    print(f"{'':8}{'wall s':>8}{'join s':>8}{'w-j s':>8}{'cpu s':>8}{'RSS MiB':>9}{'wrote MiB':>11}{'in S3 MiB':>11}")
    medians = {}
    for who, results in rows.items():
        if not results:
            continue
        m = {k: med(r[k] for r in results) for k in ("wall", "cpu", "rss", "written", "stored", "archive", "join")}
        m["client"] = med(r["wall"] - r["join"] for r in results)
        medians[who] = m
        print(f"{who:8}{m['wall']:8.2f}{m['join']:8.2f}{m['client']:8.2f}{m['cpu']:8.2f}{m['rss'] / 2**20:9.0f}"
              f"{m['written'] / 2**20:11.0f}{m['stored'] / 2**20:11.1f}")
    print("join: moto's own time joining multipart uploads (bench/s3server.py); w-j: wall without it")
    ours = medians["ours"]
    assembly = med(r.get("assembly", 0.0) for r in rows["ours"])
    if assembly:
        print(f"ours: CompleteMultipartUpload took {assembly:.2f}s (median) as our upload line reports it")
    for other in ("shell", "restic"):
        if other in medians:
            print(f"ours/{other}: wall {ours['wall'] / medians[other]['wall']:.2f}, "
                  f"wall without moto's join {ours['client'] / medians[other]['client']:.2f}, "
                  f"cpu {ours['cpu'] / medians[other]['cpu']:.2f}, "
                  f"stored {ours['stored'] / medians[other]['stored']:.3f}")
    input_bytes = size * 9 // 10 + raw_dump
    print(f"machine limit: zstd -T0 -3 over the same input {limit['wall']:.2f}s "
          f"({input_bytes / limit['wall'] / 2**20:.0f} MiB/s); ours {input_bytes / ours['wall'] / 2**20:.0f} MiB/s "
          f"= {limit['wall'] / ours['wall']:.2f} of the limit")
    print(f"extra local disk: ours wrote {ours['written'] / 2**20:.0f} MiB; archive + raw dump = "
          f"{(ours['archive'] + raw_dump) / 2**20:.0f} MiB")
    r = resumed
    print(f"resume: first run (S3 refuses after 3 parts) {r['first']['wall']:.2f}s exit {r['first']['code']}; "
          f"re-run {r['second']['wall']:.2f}s; dumps {r['dumps']}, tar passes {r['tars']}, archives {r['archives']} "
          f"over both runs; {r['resumed'][0] if r['resumed'] else 'no parts resumed'}")
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


if __name__ == "__main__":
    main()
