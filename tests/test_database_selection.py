"""Which tables a site's dump holds: the whole database (tables, views, triggers, routines,
events), or, when the database also holds another WordPress install, only the tables the
site's prefix owns; `db.tables` in sites.json overrides the detection."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from wpbackup.database.mysql import DatabaseNameFilter, select_tables, summarize

from .conftest import make_site

OPTIONS = "(option_id INT AUTO_INCREMENT PRIMARY KEY, option_name VARCHAR(191), option_value LONGTEXT)"


def install_sql(prefix: str, posts: int = 1) -> str:
    """The tables of a WordPress-like install, made with plain SQL."""
    rows = ", ".join(f"({i}, 'post {i} of {prefix}')" for i in range(1, posts + 1))
    return (f"CREATE TABLE {prefix}options {OPTIONS}; "
            f"INSERT INTO {prefix}options (option_name, option_value) VALUES ('siteurl', 'http://{prefix}.test'); "
            f"CREATE TABLE {prefix}posts (ID INT PRIMARY KEY, post_title TEXT); "
            f"INSERT INTO {prefix}posts VALUES {rows}; ")


@pytest.fixture
def database(mariadb, wordpress):
    """A factory of fresh databases the shared WordPress user may use; all dropped after."""
    made: list[str] = []

    def create(sql: str = "", charset: str = "utf8mb4") -> str:
        name = f"sel_{uuid.uuid4().hex[:12]}"
        made.append(name)
        mariadb.sql(f"CREATE DATABASE {name} CHARACTER SET {charset}; "
                    f"GRANT ALL ON {name}.* TO '{wordpress.db_user}'@'127.0.0.1'")
        if sql:
            mariadb.sql(sql, database=name)
        return name

    yield create
    for name in made:
        mariadb.sql(f"DROP DATABASE IF EXISTS {name}")


def definer(wordpress) -> str:
    return f"DEFINER='{wordpress.db_user}'@'127.0.0.1'"


def add_site(install, tmp_path, wordpress, name: str, db_name: str, prefix: str = "wp_", **db) -> None:
    """A site folder whose wp-config.php points at ``db_name`` with ``prefix``."""
    root = make_site(tmp_path, wordpress, name=name)
    wordpress.write_config(db_name, root)
    config = root / "wp-config.php"
    config.write_text(config.read_text().replace("$table_prefix = 'wp_';", f"$table_prefix = '{prefix}';"))
    install.sites.append({"name": name, "path": str(root), **({"db": db} if db else {})})


def member(archive, name: str) -> bytes:
    return subprocess.run(["tar", "--zstd", "-xOf", str(archive), name], check=True, capture_output=True).stdout


def archive_of(install, site: str):
    [archive] = [a for a in install.archives() if a.name.startswith(f"{site}-backup-")]
    return archive


def contents(install, site: str) -> tuple[str, dict]:
    """database.sql and the manifest's "database" entry of the site's archive."""
    archive = archive_of(install, site)
    return (member(archive, "database.sql").decode(),
            json.loads(member(archive, "manifest.json"))["database"])


def infos(install, site: str) -> list[str]:
    return [r["details"] for r in install.rows(
        "SELECT details FROM backup_log WHERE site_name = ? AND status = 'INFO' ORDER BY id", site)]


def created_tables(sql: str) -> set[str]:
    return {line.split("`")[1] for line in sql.splitlines() if line.startswith("CREATE TABLE `")}


def backup(install) -> subprocess.CompletedProcess:
    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def schema(mariadb, name: str) -> dict[str, set[str]]:
    """What information_schema shows of a database: tables, views, triggers, routines, events."""
    def names(query: str) -> set[str]:
        return set(mariadb.sql(query.format(db=name)).split())
    return {
        "tables": names("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}' "
                        "AND TABLE_TYPE = 'BASE TABLE'"),
        "views": names("SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = '{db}'"),
        "triggers": names("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{db}'"),
        "routines": names("SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = '{db}'"),
        "events": names("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = '{db}'"),
    }


def test_a_single_install_dumps_the_whole_database(install, wordpress, mariadb, database, tmp_path):
    who = definer(wordpress)
    # created under latin1, then the database moved to utf8mb4 (as WordPress sites did): the
    # dump switches the collation around the routine with ALTER DATABASE
    name = database(f"CREATE {who} PROCEDURE old_latin1() SELECT 1;", charset="latin1")
    mariadb.sql(f"ALTER DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    mariadb.sql(install_sql("wp_", posts=3)
                + "CREATE TABLE orders (id INT PRIMARY KEY, total INT); CREATE TABLE order_audit (order_id INT); "
                "INSERT INTO orders VALUES (1, 10), (2, 20); "
                f"CREATE {who} TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW "
                "INSERT INTO order_audit VALUES (NEW.id); "
                f"CREATE {who} VIEW order_totals AS SELECT SUM(total) AS total FROM orders; "
                f"CREATE {who} PROCEDURE order_count() SELECT COUNT(*) FROM orders; "
                f"CREATE {who} EVENT purge_audit ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM order_audit;",
                database=name)
    add_site(install, tmp_path, wordpress, "shop", name)
    backup(install)
    sql, manifest = contents(install, "shop")
    assert manifest["selection"] == "all" and manifest["left_out"] == {}
    assert manifest["tables"] == {"order_audit": 0, "order_totals": None, "orders": 2, "wp_options": 1,
                                  "wp_posts": 3}
    assert set(manifest["routines_and_events"]) == {"PROCEDURE old_latin1", "PROCEDURE order_count",
                                                     "EVENT purge_audit"}
    assert "CREATE DATABASE" not in sql and "\nUSE " not in sql and f"`{name}`" not in sql
    assert "\nALTER DATABASE CHARACTER SET latin1" in sql  # kept, without the database's name
    assert any(line.startswith("database ") and "the whole database" in line for line in infos(install, "shop"))

    copy = database()
    mariadb.load(copy, _write(tmp_path, sql))
    assert schema(mariadb, copy) == {
        "tables": {"order_audit", "orders", "wp_options", "wp_posts"}, "views": {"order_totals"},
        "triggers": {"orders_audit"}, "routines": {"old_latin1", "order_count"}, "events": {"purge_audit"}}
    assert mariadb.sql("SELECT DATABASE_COLLATION FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = "
                       f"'{copy}' AND ROUTINE_NAME = 'old_latin1'").strip() == "latin1_swedish_ci"
    mariadb.sql("INSERT INTO orders VALUES (3, 30)", database=copy)
    assert mariadb.sql("SELECT COUNT(*) FROM order_audit", database=copy).strip() == "1"  # the trigger works
    assert mariadb.sql("SELECT total FROM order_totals", database=copy).strip() == "60"


def _write(tmp_path, sql: str):
    path = tmp_path / f"dump-{uuid.uuid4().hex[:8]}.sql"
    path.write_text(sql)
    return path


def shared_sql(wordpress) -> str:
    """A blog (wp_) and a shop (wp_shop_) in one database, a table of neither, a trigger on
    each install's table and a procedure."""
    who = definer(wordpress)
    return (install_sql("wp_", posts=2) + install_sql("wp_shop_", posts=1)
            + "CREATE TABLE wp_shop_orders (id INT PRIMARY KEY); INSERT INTO wp_shop_orders VALUES (1), (2), (3); "
            "CREATE TABLE wp_log (id INT); CREATE TABLE wp_shop_log (id INT); CREATE TABLE legacy_stats (id INT); "
            f"CREATE {who} TRIGGER blog_posts_log AFTER INSERT ON wp_posts FOR EACH ROW "
            "INSERT INTO wp_log VALUES (NEW.ID); "
            f"CREATE {who} TRIGGER shop_orders_log AFTER INSERT ON wp_shop_orders FOR EACH ROW "
            "INSERT INTO wp_shop_log VALUES (NEW.id); "
            f"CREATE {who} PROCEDURE shop_report() SELECT COUNT(*) FROM wp_shop_orders;")


def test_two_installs_in_one_database_each_dump_only_their_own(install, wordpress, mariadb, database, tmp_path):
    name = database(shared_sql(wordpress))
    add_site(install, tmp_path, wordpress, "blog", name)
    add_site(install, tmp_path, wordpress, "shop", name, prefix="wp_shop_")
    backup(install)

    blog_sql, blog = contents(install, "blog")
    assert blog["selection"] == "prefix" and "wp_shop_" in blog["selected_because"]
    assert blog["tables"] == {"wp_log": 0, "wp_options": 1, "wp_posts": 2}
    assert created_tables(blog_sql) == set(blog["tables"])  # restore relies on the manifest's list
    assert blog["left_out"] == {
        "legacy_stats": "belongs to no WordPress install (starts with no install's prefix)",
        "wp_shop_log": "belongs to the install with prefix wp_shop_",
        "wp_shop_options": "belongs to the install with prefix wp_shop_",
        "wp_shop_orders": "belongs to the install with prefix wp_shop_",
        "wp_shop_posts": "belongs to the install with prefix wp_shop_"}
    assert "blog_posts_log" in blog_sql and "shop_orders_log" not in blog_sql and "wp_shop_" not in blog_sql
    assert blog["routines_and_events"] == [] and "shop_report" not in blog_sql
    assert "PROCEDURE shop_report" in blog["routines_and_events_left_out"]

    shop_sql, shop = contents(install, "shop")
    assert shop["tables"] == {"wp_shop_log": 0, "wp_shop_options": 1, "wp_shop_orders": 3, "wp_shop_posts": 1}
    assert created_tables(shop_sql) == set(shop["tables"])
    assert shop["left_out"]["wp_posts"] == "belongs to the install with prefix wp_"
    assert "shop_orders_log" in shop_sql and "blog_posts_log" not in shop_sql

    lines = infos(install, "blog")
    [left] = [line for line in lines if "tables left out" in line]
    assert left.startswith("5 tables left out of the dump: ")
    assert "wp_shop_orders: belongs to the install with prefix wp_shop_" in left
    assert "legacy_stats: belongs to no WordPress install" in left
    assert any("routines and events left out" in line and "shop_report" in line for line in lines)

    copy = database()  # the blog's dump alone is a working database
    mariadb.load(copy, _write(tmp_path, blog_sql))
    assert schema(mariadb, copy)["tables"] == {"wp_log", "wp_options", "wp_posts"}
    assert schema(mariadb, copy)["triggers"] == {"blog_posts_log"}


def test_a_multisite_networks_subsites_are_its_own(install, wordpress, mariadb, database, tmp_path):
    name = database(install_sql("wp_") + "CREATE TABLE wp_blogs (blog_id INT); CREATE TABLE wp_site (id INT); "
                    + install_sql("wp_2_", posts=2) + install_sql("wp_13_", posts=1)
                    + install_sql("wp_shop_"))  # and a second install beside the network
    add_site(install, tmp_path, wordpress, "network", name)
    backup(install)
    sql, manifest = contents(install, "network")
    assert manifest["selection"] == "prefix"
    assert set(manifest["tables"]) == {"wp_blogs", "wp_site", "wp_options", "wp_posts", "wp_2_options",
                                       "wp_2_posts", "wp_13_options", "wp_13_posts"}
    assert manifest["tables"]["wp_2_posts"] == 2
    assert set(manifest["left_out"]) == {"wp_shop_options", "wp_shop_posts"}
    assert created_tables(sql) == set(manifest["tables"])


def test_db_tables_all_dumps_another_installs_tables_too(install, wordpress, mariadb, database, tmp_path):
    name = database(shared_sql(wordpress))
    add_site(install, tmp_path, wordpress, "blog", name, tables="all")
    backup(install)
    sql, manifest = contents(install, "blog")
    assert manifest["selection"] == "all" and manifest["selected_because"] == 'db.tables is "all" in sites.json'
    assert manifest["left_out"] == {} and manifest["tables"]["wp_shop_orders"] == 3
    assert {"wp_shop_orders", "legacy_stats", "wp_posts"} <= created_tables(sql)
    assert "shop_orders_log" in sql and manifest["routines_and_events"] == ["PROCEDURE shop_report"]


def test_db_tables_prefix_leaves_a_custom_table_out(install, wordpress, mariadb, database, tmp_path):
    name = database(install_sql("wp_") + "CREATE TABLE orders (id INT);")
    add_site(install, tmp_path, wordpress, "blog", name, tables="prefix")
    backup(install)
    sql, manifest = contents(install, "blog")
    assert manifest["selection"] == "prefix" and set(manifest["tables"]) == {"wp_options", "wp_posts"}
    assert manifest["left_out"] == {"orders": "belongs to no WordPress install (starts with no install's prefix)"}
    assert "CREATE TABLE `orders`" not in sql


@pytest.mark.parametrize("value, shown", [("some", '"some"'), (1, "1"), (["all"], '["all"]')])
def test_a_bad_db_tables_is_a_configuration_error(install, wordpress, database, tmp_path, value, shown):
    add_site(install, tmp_path, wordpress, "blog", database(install_sql("wp_")), tables=value)
    result = install.doit("backup")
    assert result.returncode == 3, result.stdout + result.stderr
    expected = (f"{install.root / 'sites.json'}: site 'blog': db: tables: "
                f'must be "all" or "prefix", got {shown}')
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert install.archives() == []


def test_no_table_of_the_site_in_a_shared_database_fails(install, wordpress, database, tmp_path):
    name = database(install_sql("wp_shop_") + "CREATE TABLE wp_shop_orders (id INT);")
    add_site(install, tmp_path, wordpress, "blog", name)
    result = install.doit("backup")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "has no table with prefix 'wp_' of this site" in output
    assert "they belong to the install with prefix wp_shop_" in output
    assert install.archives() == []
    [error] = install.rows("SELECT details FROM backup_log WHERE status = 'ERROR'")
    assert "refusing to store an empty dump" in error["details"]


def test_a_user_without_the_event_privilege_still_gets_its_dump(install, wordpress, mariadb, database, tmp_path):
    name = database(install_sql("wp_"))
    user = f"ev_{uuid.uuid4().hex[:8]}"
    mariadb.sql(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'limited-pass-1'; "
                f"GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES ON {name}.* TO '{user}'@'127.0.0.1'")
    try:
        add_site(install, tmp_path, wordpress, "blog", name, user=user, password="limited-pass-1")
        backup(install)
        sql, manifest = contents(install, "blog")
        assert set(manifest["tables"]) == {"wp_options", "wp_posts"}
        assert any(line.startswith(f"events not dumped: user '{user}' lacks the EVENT privilege")
                   for line in infos(install, "blog"))
    finally:
        mariadb.sql(f"DROP USER '{user}'@'127.0.0.1'")


# the rules themselves, without a server

def test_ownership_rules():
    names = ["wp_options", "wp_posts", "wp_shop_options", "wp_shop_orders", "wp_2_options", "wp_2_posts",
             "custom"]
    options = {n for n in names if n.endswith("options")}
    # no wp_blogs: wp_2_ is an install of its own
    chosen = select_tables(names, options, "wp_", None)
    assert chosen.mode == "prefix" and chosen.others == ["wp_2_", "wp_shop_"]
    assert chosen.tables == ["wp_options", "wp_posts"]
    assert chosen.left_out["wp_2_posts"] == "belongs to the install with prefix wp_2_"
    # with wp_blogs, wp_2_ is a subsite of the wp_ network
    chosen = select_tables(names + ["wp_blogs"], options, "wp_", None)
    assert chosen.others == ["wp_shop_"] and "wp_2_posts" in chosen.tables and "wp_blogs" in chosen.tables
    # the longest prefix wins, also for the other install's own dump
    chosen = select_tables(names, options, "wp_shop_", None)
    assert chosen.tables == ["wp_shop_options", "wp_shop_orders"]
    assert chosen.left_out["wp_posts"] == "belongs to the install with prefix wp_"
    # alone in its database: everything, custom tables too
    alone = select_tables(["wp_options", "wp_posts", "custom"], {"wp_options"}, "wp_", None)
    assert (alone.mode, alone.tables, alone.left_out) == ("all", ["wp_options", "wp_posts", "custom"], {})
    # a prefix that ends in digits, and a network whose prefix does
    assert select_tables(["wp2_options", "wp2_3_options", "wp2_blogs"], {"wp2_options", "wp2_3_options"},
                         "wp2_", None).others == []


def test_summarize_caps_the_list():
    reasons = {f"t{i}": "why" for i in range(25)}
    text = summarize(reasons)
    assert text.startswith("t0: why; t1: why") and text.endswith("t9: why; and 15 more")
    assert summarize({"a": "x"}) == "a: x"


@pytest.mark.parametrize("size", [1, 3, 7, 19, 1000])
def test_the_database_name_leaves_alter_database_in_any_chunking(size):
    dump = (b"-- head\nALTER DATABASE `my``db` CHARACTER SET latin1 COLLATE latin1_swedish_ci ;\n"
            b"CREATE PROCEDURE p() SELECT 'ALTER DATABASE `my``db` stays in data';\n"
            b"ALTER DATABASE `my``db` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci ;;\n-- Dump completed\n")
    names = DatabaseNameFilter("my`db")
    out = b"".join(names.feed(dump[i:i + size]) for i in range(0, len(dump), size)) + names.close()
    assert out == dump.replace(b"\nALTER DATABASE `my``db` ", b"\nALTER DATABASE ")
    assert out.count(b"`my``db`") == 1


def test_a_database_name_that_looks_like_an_option_is_refused(install, wordpress, tmp_path):
    """DB_NAME '--host=elsewhere' must never reach a client's argv as an option."""
    root = make_site(tmp_path, wordpress)
    config = root / "wp-config.php"
    config.write_text(config.read_text().replace(f"define('DB_NAME', '{wordpress.db_name}')",
                                                 "define('DB_NAME', '--host=elsewhere')"))
    install.sites.append({"name": "dash", "path": str(root)})
    result = install.doit("backup")
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in out
    assert "starts with '-', which a database client would read as an option" in out
    assert install.archives() == []
