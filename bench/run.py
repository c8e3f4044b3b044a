"""Backup benchmark: one command, ratios against baselines measured in the same run.

    python bench/run.py --sizes 200M,1G [--repeat 2] [--s3] [--restore]

For each size it generates a site (bench/sitegen.py) on a throwaway MariaDB, then alternates:
  ours   `doit backup` (local-only, or to moto S3 with --s3), peak RSS of the whole process tree
  shell  `mariadb-dump | zstd -T0 -3 > db.sql.zst; tar -cf - wp-content | zstd -T0 -3 > files.tar.zst`
and prints medians: wall time, peak RSS, archive size, and ours/shell ratios.
With --restore it then alternates restores of the newest archive into a fresh folder and database:
  ours   `doit restore --site site --target DIR --database DB --force` (checksum, safe extraction)
  shell  `zstd -dc ARCHIVE | tar -x -C DIR; mariadb DB < DIR/database.sql`
"""

from __future__ import annotations

import argparse
import json
import os
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
sys.path.insert(0, str(HERE.parent))

from bench.sitegen import database_sql, parse_size, write_site  # noqa: E402
from tests.servers import MariaDB, MotoS3  # noqa: E402


def peak_rss(proc: subprocess.Popen, stop: threading.Event, result: dict) -> None:
    """Sample the RSS of the process and all its descendants every 20 ms."""
    peak = 0
    try:
        root = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        total = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            break
        peak = max(peak, total)
        time.sleep(0.02)
    result["peak"] = peak


def timed(argv, env=None, cwd=None, shell=False) -> tuple[float, int, str]:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, shell=shell, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    stop, result = threading.Event(), {}
    sampler = threading.Thread(target=peak_rss, args=(proc, stop, result))
    sampler.start()
    output, _ = proc.communicate()
    elapsed = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {argv}\n{output[-3000:]}")
    return elapsed, result.get("peak", 0), output


def run_size(label: str, size: int, repeat: int, use_s3: bool, mariadb: MariaDB, s3: MotoS3 | None) -> dict:
    base = Path(tempfile.mkdtemp(prefix=f"wpb-bench-{label}-"))
    try:
        name = f"bench_{label.lower()}"
        mariadb.sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4; CREATE USER 'bench'@'127.0.0.1' "
                    f"IDENTIFIED BY 'benchpass'; GRANT ALL ON *.* TO 'bench'@'127.0.0.1';"
                    if label == LABELS[0] else f"CREATE DATABASE {name} CHARACTER SET utf8mb4;")
        t = time.perf_counter()
        mariadb.sql(database_sql(size // 10), database=name)
        site = base / "site"
        write_site(site, size, f"127.0.0.1:{mariadb.port}", name, "bench", "benchpass")
        print(f"[{label}] generated in {time.perf_counter() - t:.1f}s", flush=True)
        install = base / "install"
        install.mkdir()
        env_lines = ["SERVER_ID=bench", "LOCAL_KEEP=1"]
        if use_s3:
            env_lines += [f"S3_ENDPOINT_URL={s3.url}", "S3_BUCKET=bench", "S3_ACCESS_KEY_ID=k",
                          "S3_SECRET_ACCESS_KEY=s"]
        (install / ".env").write_text("\n".join(env_lines) + "\n")
        (install / "sites.json").write_text(json.dumps({"sites": [{"name": "site", "path": str(site)}]}))
        env = {**os.environ, "WPBACKUP_ENV": str(install / ".env")}
        ours, shell = [], []
        for i in range(repeat):
            if s3:
                s3.reset()
                s3.client().create_bucket(Bucket="bench")
            wall, rss, _ = timed([sys.executable, "-m", "doit", "-f", str(HERE.parent / "dodo.py"), "backup"],
                                 env=env)
            archive = max(install.glob("backups/*.tar.zst"))
            ours.append((wall, rss, archive.stat().st_size))
            out = base / "shell"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            script = (f"set -o pipefail; mariadb-dump --no-defaults -h127.0.0.1 -P{mariadb.port} -ubench "
                      f"-pbenchpass --single-transaction --quick {name} | zstd -q -T0 -3 > {out}/db.sql.zst && "
                      f"tar -C {site} -cf - wp-content | zstd -q -T0 -3 > {out}/files.tar.zst")
            wall, rss, _ = timed(["bash", "-c", script])
            size_shell = sum(p.stat().st_size for p in out.iterdir())
            shell.append((wall, rss, size_shell))
            print(f"[{label}] round {i + 1}: ours {ours[-1][0]:.2f}s {ours[-1][1] / 2**20:.0f} MiB, "
                  f"shell {wall:.2f}s", flush=True)
        restores = []
        for i in range(repeat if RESTORE else 0):
            archive = max(install.glob("backups/*.tar.zst"))
            ours_dir, shell_dir = base / f"r-ours-{i}", base / f"r-shell-{i}"
            mariadb.sql(f"CREATE DATABASE r_ours_{label.lower()}_{i}; CREATE DATABASE r_shell_{label.lower()}_{i}")
            wall_ours, rss_ours, _ = timed(
                [sys.executable, "-m", "doit", "-f", str(HERE.parent / "dodo.py"), "restore", "--site", "site",
                 "--target", str(ours_dir), "--database", f"r_ours_{label.lower()}_{i}", "--force"], env=env)
            shell_dir.mkdir()
            script = (f"set -o pipefail; zstd -dc {archive} | tar -x -C {shell_dir} && "
                      f"mariadb --no-defaults -h127.0.0.1 -P{mariadb.port} -ubench -pbenchpass "
                      f"r_shell_{label.lower()}_{i} < {shell_dir}/database.sql")
            wall_shell, _, _ = timed(["bash", "-c", script])
            restores.append((wall_ours, rss_ours, wall_shell))
            shutil.rmtree(ours_dir, ignore_errors=True)
            shutil.rmtree(shell_dir, ignore_errors=True)
            print(f"[{label}] restore {i + 1}: ours {wall_ours:.2f}s {rss_ours / 2**20:.0f} MiB, "
                  f"shell {wall_shell:.2f}s", flush=True)
        return {"label": label, "ours": ours, "shell": shell, "restores": restores}
    finally:
        shutil.rmtree(base, ignore_errors=True)


LABELS: list[str] = []
RESTORE = False


def main() -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200M")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--s3", action="store_true", help="upload to moto's S3 server (in this process)")
    parser.add_argument("--restore", action="store_true", help="also time restores against zstd | tar + mariadb")
    args = parser.parse_args()
    global RESTORE
    RESTORE = args.restore
    LABELS.extend(s.strip() for s in args.sizes.split(","))
    mariadb = MariaDB()
    s3 = MotoS3() if args.s3 else None
    try:
        rows = [run_size(label, parse_size(label), args.repeat, args.s3, mariadb, s3) for label in LABELS]
    finally:
        mariadb.stop()
        if s3:
            s3.stop()
    med = statistics.median
    print(f"\nmachine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; "
          f"{'to moto S3' if args.s3 else 'local-only'}; medians of {args.repeat}")
    print(f"{'size':>6} {'ours s':>8} {'shell s':>8} {'ratio':>6} {'ours RSS MiB':>13} "
          f"{'archive MiB':>12} {'shell MiB':>10} {'size ratio':>10}")
    for row in rows:
        ow, orss, osz = (med(x[i] for x in row["ours"]) for i in range(3))
        sw, _, ssz = (med(x[i] for x in row["shell"]) for i in range(3))
        print(f"{row['label']:>6} {ow:8.2f} {sw:8.2f} {ow / sw:6.2f} {orss / 2**20:13.0f} "
              f"{osz / 2**20:12.1f} {ssz / 2**20:10.1f} {osz / ssz:10.3f}")
    if args.restore:
        print(f"\n{'size':>6} {'restore s':>10} {'shell s':>8} {'ratio':>6} {'ours RSS MiB':>13}")
        for row in rows:
            ow, orss, sw = (med(x[i] for x in row["restores"]) for i in range(3))
            print(f"{row['label']:>6} {ow:10.2f} {sw:8.2f} {ow / sw:6.2f} {orss / 2**20:13.0f}")


if __name__ == "__main__":
    main()
