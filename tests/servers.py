"""Real components for the tests, started and stopped by the tests themselves:
a throwaway MariaDB, a real WordPress (Debian's package, installed by PHP's wp_install),
and moto's S3 server over HTTP. Every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

IS_ROOT = os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MariaDB:
    """mariadb-install-db + mariadbd on a free port and a short socket path."""

    def __init__(self):
        self.base = Path(tempfile.mkdtemp(prefix="wpb-mdb-"))
        self.port = free_port()
        self.socket = str(self.base / "mysql.sock")
        data = self.base / "data"
        user = ["--user=root"] if IS_ROOT else []
        subprocess.run(["mariadb-install-db", "--no-defaults", *user, f"--datadir={data}",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)
        (self.base / "tmp").mkdir()
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", *user, f"--datadir={data}", f"--socket={self.socket}",
             f"--pid-file={self.base / 'mariadbd.pid'}", "--bind-address=127.0.0.1", f"--port={self.port}",
             f"--tmpdir={self.base / 'tmp'}", f"--log-error={self.base / 'error.log'}", "--skip-name-resolve",
             "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
             "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while subprocess.run(["mariadb-admin", "--no-defaults", f"--socket={self.socket}", "-uroot", "ping"],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                log = (self.base / "error.log").read_text() if (self.base / "error.log").exists() else ""
                self.stop()
                raise RuntimeError(f"mariadbd did not start:\n{log}")
            time.sleep(0.05)

    def sql(self, statement: str, database: str | None = None) -> str:
        argv = ["mariadb", "--no-defaults", "--default-character-set=utf8mb4", f"--socket={self.socket}",
                "-uroot", "--batch", "--skip-column-names", "-e", statement]
        if database:
            argv.append(database)
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"SQL failed: {result.stderr.strip()}")
        return result.stdout

    def load(self, database: str, sql_path: Path) -> None:
        with open(sql_path, "rb") as handle:
            subprocess.run(["mariadb", "--no-defaults", "--default-character-set=utf8mb4",
                            f"--socket={self.socket}", "-uroot", database], stdin=handle, check=True,
                           capture_output=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)


INSTALL_PHP = r"""<?php
$site = $argv[1];
$_SERVER['HTTP_HOST'] = 'wp.test'; $_SERVER['REQUEST_URI'] = '/';
define('WP_INSTALLING', true);
require $site . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';
wp_install('Backup Test Blog', 'admin', 'admin@example.test', true, '', 'admin-pass-123');
update_option('siteurl', 'http://wp.test'); update_option('home', 'http://wp.test');
foreach (array('Backup test post 1 ünïcødé 😀', 'Second post — 日本語 🎉', 'Third post') as $title) {
    wp_insert_post(array('post_title' => $title, 'post_content' => "Body of $title", 'post_status' => 'publish'));
}
echo "installed\n";
"""

READ_PHP = r"""<?php
$site = $argv[1];
$_SERVER['HTTP_HOST'] = 'wp.test'; $_SERVER['REQUEST_URI'] = '/';
require $site . '/wp-load.php';
$titles = array();
foreach (get_posts(array('numberposts' => -1, 'post_type' => 'post', 'orderby' => 'ID', 'order' => 'ASC')) as $p) {
    $titles[] = $p->post_title;
}
echo json_encode(array('siteurl' => get_option('siteurl'), 'titles' => $titles));
"""

WP_CONFIG = """<?php
define('DB_NAME', '{name}');
define('DB_USER', '{user}');
define('DB_PASSWORD', '{password}');
define('DB_HOST', '{host}');
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
{salts}
$table_prefix = 'wp_';
define('WP_DEBUG', false);
define('DISABLE_WP_CRON', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_HTTP_BLOCK_EXTERNAL', true);
if (!defined('ABSPATH')) define('ABSPATH', __DIR__ . '/');
require_once ABSPATH . 'wp-settings.php';
"""

SALTS = ("AUTH_KEY", "SECURE_AUTH_KEY", "LOGGED_IN_KEY", "NONCE_KEY", "AUTH_SALT", "SECURE_AUTH_SALT",
         "LOGGED_IN_SALT", "NONCE_SALT")


class WordPress:
    """A standalone copy of Debian's WordPress, installed into its own database."""

    def __init__(self, mariadb: MariaDB, base: Path, name: str = "wordpress",
                 password: str = "S3cr3t-Pa55word!xyz"):
        self.mariadb = mariadb
        self.path = base / "site"
        self.db_name, self.db_user, self.db_password = name, f"u_{name}"[:32], password
        shutil.copytree("/usr/share/wordpress", self.path, symlinks=False)
        (self.path / "wp-content" / "uploads").mkdir(exist_ok=True)
        mariadb.sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci; "
                    f"CREATE USER '{self.db_user}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                    f"GRANT ALL ON {name}.* TO '{self.db_user}'@'127.0.0.1';")
        self.write_config(name)
        self.scripts = base / "php"
        self.scripts.mkdir()
        (self.scripts / "install.php").write_text(INSTALL_PHP)
        (self.scripts / "read.php").write_text(READ_PHP)
        out = subprocess.run(["php", str(self.scripts / "install.php"), str(self.path)],
                             capture_output=True, text=True, timeout=120)
        if "installed" not in out.stdout:
            raise RuntimeError(f"WordPress install failed: {out.stdout}\n{out.stderr}")
        upload_dir = self.path / "wp-content" / "uploads" / "2026" / "11"
        upload_dir.mkdir(parents=True)
        self.upload = upload_dir / "photo-ü.jpg"
        self.upload.write_bytes(os.urandom(300_000))

    def write_config(self, database: str, root: Path | None = None) -> None:
        salts = "\n".join(f"define('{s}', 'test-{s.lower()}');" for s in SALTS)
        (root or self.path).joinpath("wp-config.php").write_text(WP_CONFIG.format(
            name=database, user=self.db_user, password=self.db_password,
            host=f"127.0.0.1:{self.mariadb.port}", salts=salts))

    def read(self, root: Path | None = None) -> dict:
        """What WordPress itself (php) shows: siteurl and post titles; {} when it cannot."""
        out = subprocess.run(["php", str(self.scripts / "read.php"), str(root or self.path)],
                             capture_output=True, text=True, timeout=60)
        try:  # without its database WordPress prints an error page (or nothing)
            return json.loads(out.stdout)
        except ValueError:
            return {}


class MotoS3:
    """moto's S3 server in-process, over real HTTP on 127.0.0.1."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def reset(self) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")).read()

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            config=Config(s3={"addressing_style": "path"}))

    def stop(self) -> None:
        self.server.stop()
