"""Generate a realistic WordPress site of a chosen size for benchmarks.

Database: WordPress-shaped tables (posts, postmeta, comments, options) filled with SQL
(`INSERT ... SELECT FROM seq_...`), not one wp_insert_post per row. Files: wp-content with
compressible themes/plugins (PHP/JS/CSS-like text) and mostly incompressible uploads of varied
sizes, some large. Roughly 10% of the size goes to the database, 15% to code, 75% to uploads.

A night's changes, for the benchmark's second backup: uploads rewritten with new content
(`pick_uploads`, `rewrite_files`), a new upload (`write_random`) and posts written to the
database, with their postmeta rows (`night_sql`, undone by `undo_night_sql`).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

WORDS = ("wordpress backup archive function return array post meta option theme plugin "
         "content image gallery comment author date title excerpt status public private "
         "query filter action hook widget sidebar header footer style script").split()

SCHEMA = """
CREATE TABLE wp_posts (ID BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT, post_author BIGINT UNSIGNED,
  post_date DATETIME, post_content LONGTEXT, post_title TEXT, post_status VARCHAR(20),
  post_name VARCHAR(200), post_type VARCHAR(20), KEY type_status (post_type, post_status))
  DEFAULT CHARSET=utf8mb4;
CREATE TABLE wp_postmeta (meta_id BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT, post_id BIGINT UNSIGNED,
  meta_key VARCHAR(255), meta_value LONGTEXT, KEY post_id (post_id)) DEFAULT CHARSET=utf8mb4;
CREATE TABLE wp_comments (comment_ID BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT,
  comment_post_ID BIGINT UNSIGNED, comment_author TINYTEXT, comment_date DATETIME,
  comment_content TEXT, KEY post (comment_post_ID)) DEFAULT CHARSET=utf8mb4;
CREATE TABLE wp_options (option_id BIGINT UNSIGNED PRIMARY KEY AUTO_INCREMENT,
  option_name VARCHAR(191) UNIQUE, option_value LONGTEXT, autoload VARCHAR(20)) DEFAULT CHARSET=utf8mb4;
"""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


def database_sql(db_bytes: int) -> str:
    """SQL that fills the schema with about db_bytes of data (posts ~ 4 KiB each)."""
    posts = max(100, db_bytes // 5000)
    return SCHEMA + f"""
INSERT INTO wp_posts (post_author, post_date, post_content, post_title, post_status, post_name, post_type)
  SELECT 1, NOW() - INTERVAL seq HOUR,
    CONCAT(REPEAT(CONCAT('<p>Lorem ipsum ', MD5(seq), ' dolor sit amet 😀 </p>'), 40), SHA2(seq, 512)),
    CONCAT('Post number ', seq, ' ünïcødé'), 'publish', CONCAT('post-', seq), 'post'
  FROM seq_1_to_{posts};
INSERT INTO wp_postmeta (post_id, meta_key, meta_value)
  SELECT 1 + seq DIV 3, ELT(1 + seq MOD 3, '_edit_lock', '_thumbnail_id', '_wp_page_template'), MD5(seq)
  FROM seq_1_to_{posts * 3};
INSERT INTO wp_comments (comment_post_ID, comment_author, comment_date, comment_content)
  SELECT 1 + seq DIV 2, CONCAT('visitor', seq MOD 97), NOW(), CONCAT('Nice post! ', SHA2(seq, 256))
  FROM seq_1_to_{posts * 2};
INSERT INTO wp_options (option_name, option_value, autoload)
  SELECT CONCAT('option_', seq), REPEAT(MD5(seq), 8), 'yes' FROM seq_1_to_500;
"""


def _code_text(rng: random.Random, size: int) -> bytes:
    lines = []
    total = 0
    while total < size:
        line = "    " * rng.randint(0, 3) + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        line += rng.choice([";", " {", " }", "();", ""]) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def write_random(path: Path, size: int) -> None:
    """Fresh random bytes: uploads are already-compressed media, nothing to gain for zstd."""
    with open(path, "wb") as handle:
        left = size
        while left:
            piece = os.urandom(min(left, 1 << 20))
            handle.write(piece)
            left -= len(piece)


def write_files(root: Path, files_bytes: int, seed: int = 7) -> tuple[int, int]:
    """wp-content under root: code (compressible) and uploads (random). Returns (files, bytes)."""
    rng = random.Random(seed)
    content = root / "wp-content"
    code_budget = files_bytes * 15 // 100
    upload_budget = files_bytes - code_budget
    count = written = 0
    done = 0
    while done < code_budget:
        kind = rng.choice(["themes", "plugins"])
        folder = content / kind / f"{kind[:-1]}-{count // 40}" / rng.choice(["inc", "assets", "lib", ""])
        folder.mkdir(parents=True, exist_ok=True)
        size = min(rng.randint(2_000, 60_000), code_budget - done)
        ext = rng.choice([".php", ".js", ".css"])
        (folder / f"file-{count}{ext}").write_bytes(_code_text(rng, size))
        done += size
        count += 1
    written += done
    done = 0
    while done < upload_budget:
        folder = content / "uploads" / str(2020 + count % 6) / f"{1 + count % 12:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.choice([rng.randint(20_000, 400_000)] * 8 + [rng.randint(2 << 20, 40 << 20)])
        size = min(size, upload_budget - done)
        write_random(folder / f"image-{count}.jpg", size)
        done += size
        count += 1
    written += done
    return count, written


def write_site(root: Path, total_bytes: int, db_host: str, db_name: str, db_user: str, db_password: str) -> None:
    """A WordPress root with wp-config.php, version.php and generated wp-content."""
    (root / "wp-includes").mkdir(parents=True, exist_ok=True)
    (root / "wp-includes" / "version.php").write_text("<?php\n$wp_version = '6.1.9';\n")
    (root / "wp-config.php").write_text(
        "<?php\n"
        f"define('DB_NAME', '{db_name}');\ndefine('DB_USER', '{db_user}');\n"
        f"define('DB_PASSWORD', '{db_password}');\ndefine('DB_HOST', '{db_host}');\n"
        "$table_prefix = 'wp_';\n")
    write_files(root, total_bytes * 90 // 100)


def pick_uploads(root: Path, count: int, seed: int = 18, below: int = 1 << 20) -> list[Path]:
    """`count` of the site's ordinary uploads (images under `below` bytes: write_files's
    20-400 kB kind, not its 2-40 MiB media), the same ones for the same site and seed,
    spread over the whole tree (a night's edits land anywhere, not only in the newest
    folder). Picking among all uploads would rewrite a third of a 200 MiB site's upload
    bytes some nights and a tenth on others: a night that says more about the seed than
    about the tools."""
    uploads = sorted(p for p in (root / "wp-content" / "uploads").rglob("*")
                     if p.is_file() and p.stat().st_size < below)
    return random.Random(seed).sample(uploads, min(count, len(uploads)))


def rewrite_files(paths: list[Path]) -> int:
    """Each file rewritten in place with new random content of the same size (an image
    edited and saved again); returns the bytes rewritten."""
    total = 0
    for path in paths:
        size = path.stat().st_size
        write_random(path, size)
        total += size
    return total


def night_sql(after_post: int, posts: int = 20) -> str:
    """`posts` new posts with IDs after `after_post`, shaped like database_sql's (new text, so
    nothing in them repeats an existing post), and three postmeta rows each."""
    return f"""
INSERT INTO wp_posts (ID, post_author, post_date, post_content, post_title, post_status, post_name, post_type)
  SELECT {after_post} + seq, 1, NOW(),
    CONCAT(REPEAT(CONCAT('<p>Tonight ', MD5(CONCAT('night', seq)), ' dolor sit amet 😀 </p>'), 40),
           SHA2(CONCAT('night', seq), 512)),
    CONCAT('Night post ', seq, ' ünïcødé'), 'publish', CONCAT('night-post-', seq), 'post'
  FROM seq_1_to_{posts};
INSERT INTO wp_postmeta (post_id, meta_key, meta_value)
  SELECT {after_post} + 1 + seq DIV 3, ELT(1 + seq MOD 3, '_edit_lock', '_thumbnail_id', '_wp_page_template'),
    MD5(CONCAT('night', seq))
  FROM seq_0_to_{posts * 3 - 1};
"""


def undo_night_sql(after_post: int, after_meta: int) -> str:
    """The database as it was before night_sql: rows past the last post and meta row go."""
    return (f"DELETE FROM wp_postmeta WHERE meta_id > {after_meta}; "
            f"DELETE FROM wp_posts WHERE ID > {after_post};")
