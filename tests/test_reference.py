"""Docs that cannot drift: .env.sample, sites.json.sample and docs/configuration.md are what
wpbackup/config/reference.py generates from KEYS and sites.py, every key the code reads is a
key of KEYS, and the samples are configurations that load."""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import pytest
from dotenv import dotenv_values

from wpbackup.config import reference
from wpbackup.config.settings import BY_NAME, KEYS, Key, Settings, load_settings, parse_value
from wpbackup.config.sites import FROM_WP_CONFIG, load_sites
from wpbackup.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
RUN = "run `python -m wpbackup.config.reference`"

#: Upper-case names in the code that are no `.env` key, and why.
NOT_KEYS = {
    # environment variables: where .env is, where discovery looks, the client's socket, a CA bundle
    "WPBACKUP_ENV", "WPBACKUP_DISCOVER_ROOTS", "MYSQL_UNIX_PORT", "SSL_CERT_FILE", "PYTHONUNBUFFERED",
    # wp-config.php constants (DB_X: the docstrings' placeholder)
    "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_HOST", "DB_CHARSET", "DB_COLLATE", "DB_X", "WP_HOME", "WP_SITEURL",
    "WP_CONTENT_DIR",
    # other programs' words: S3's checksum type and storage classes, an OpenSSL reason, doit's settings
    "FULL_OBJECT", "STANDARD_IA", "DEEP_ARCHIVE", "WRONG_VERSION_NUMBER", "DOIT_CONFIG",
    # the seed's .env keys, read only by `doit migrate` (wpbackup/ops/migrate.py) from an old install
    "S3_SERVER_1_ENDPOINT", "S3_SERVER_1_BUCKET", "S3_SERVER_1_REGION", "S3_SERVER_1_ACCESS_KEY",
    "S3_SERVER_1_SECRET_KEY", "CLOUDFLARE_ACCOUNT_ID", "CLOUDFLARE_D1_DATABASE_ID", "CLOUDFLARE_API_TOKEN",
    "SMTP_SERVER", "SMTP_USER", "SMTP_SENDER_EMAIL", "REMOTE_HOST", "REMOTE_USER", "REMOTE_PORT", "REMOTE_DIR",
    "RETENTION_LOCAL_DAYS", "RETENTION_S3_DAYS", "WP_CONFIG_PATH", "WP_CONTENT_PATH",
}
KEY_LITERAL_RE = re.compile(r"""["']([A-Z][A-Z0-9]+_[A-Z0-9_]+)["']""")


def _differs(path: Path, want: str) -> str:
    return f"{path.name} is not what the generator writes: {RUN} and review the diff\n" + reference.diff(path, want)


def test_env_sample_is_what_the_generator_writes():
    want = reference.render_env_sample()
    assert reference.ENV_SAMPLE.read_text(encoding="utf-8") == want, _differs(reference.ENV_SAMPLE, want)


def test_configuration_doc_is_what_the_generator_writes():
    path = reference.CONFIGURATION_DOC
    want = reference.render_configuration_doc(path.read_text(encoding="utf-8"))
    assert path.read_text(encoding="utf-8") == want, _differs(path, want)


def test_sites_sample_is_what_the_generator_writes():
    want = reference.render_sites_sample()
    assert reference.SITES_SAMPLE.read_text(encoding="utf-8") == want, _differs(reference.SITES_SAMPLE, want)


def test_the_sites_sample_loads_and_starts_minimal():
    """The sample is a sites.json every run accepts (its paths need not exist: sites.py
    checks their form, a backup their presence); the first entry is all a first-time user
    needs, and together the entries show every top-level field."""
    sites = load_sites(reference.SITES_SAMPLE)
    entries = json.loads(reference.SITES_SAMPLE.read_text(encoding="utf-8"))["sites"]
    assert [site.name for site in sites] == [entry["name"] for entry in entries]
    assert list(entries[0]) == ["name", "path"]
    assert {key for entry in entries for key in entry} == {"name", "path", "enabled", "files", "exclude", "db"}
    assert any(site.files == "all" and site.exclude for site in sites)
    assert any(not site.enabled for site in sites)


def test_the_sites_sample_overrides_nothing_wp_config_gives():
    """A `db` key in sites.json wins over wp-config.php: a placeholder login copied from the
    sample would be refused, so the sample carries none (issue 16)."""
    for entry in json.loads(reference.render_sites_sample())["sites"]:
        assert not (set(FROM_WP_CONFIG) | {"port", "socket"}) & set(entry.get("db", {})), entry["name"]


def test_a_sample_site_that_would_not_load_is_refused(tmp_path, monkeypatch, capsys):
    sample = tmp_path / "sites.json.sample"
    sample.write_text("untouched", encoding="utf-8")
    monkeypatch.setattr(reference, "SITES_SAMPLE", sample)
    monkeypatch.setattr(reference, "SAMPLE_SITES", ({"name": "Blog", "path": "var/www/blog"},))
    with pytest.raises(ConfigError):
        reference.render_sites_sample()
    assert reference.main([]) == 1
    err = capsys.readouterr().err
    assert "reference: " in err and "name: 'Blog' must match" in err and "path: must be an absolute path" in err
    assert sample.read_text(encoding="utf-8") == "untouched"


def test_every_key_is_documented_and_every_documented_key_exists():
    assert set(reference.DOCS) == {key.name for key in KEYS}, f"DOCS and KEYS differ: {reference.undocumented()}"
    assert reference.undocumented() == []


def test_every_sites_field_is_documented_and_exists():
    from wpbackup.config.sites import _DB_KEYS, _SITE_KEYS

    documented = {field.name for field in reference.SITE_FIELDS}
    assert documented == set(_SITE_KEYS) | {f"db.{key}" for key in _DB_KEYS}


def _code_files() -> list[Path]:
    return sorted([*(REPO / "wpbackup").rglob("*.py"), *(REPO / "tasks").rglob("*.py"), REPO / "dodo.py"])


def test_every_key_the_code_names_is_a_key_of_keys():
    """A static scan: every quoted KEY_LIKE name in wpbackup/, tasks/ and dodo.py is a key
    of KEYS (settings.value("X"), raw.get("X"), a message naming it) or one of NOT_KEYS."""
    unknown = {}
    for path in _code_files():
        for name in KEY_LITERAL_RE.findall(path.read_text(encoding="utf-8")):
            if name not in BY_NAME and name not in NOT_KEYS:
                unknown.setdefault(name, path.relative_to(REPO).as_posix())
    assert unknown == {}, ("names that are no key of KEYS: add the key to KEYS (and DOCS), or, if it is "
                           "no .env key, to NOT_KEYS in tests/test_reference.py")
    assert not NOT_KEYS & set(BY_NAME)


def test_the_scan_finds_what_the_code_reads():
    """The scan is no empty loop: it sees keys read through Settings.value and raw."""
    seen = {name for path in _code_files() for name in KEY_LITERAL_RE.findall(path.read_text(encoding="utf-8"))}
    assert {"SMTP_HOST", "NOTIFY_URLS", "HEALTHCHECK_URL", "SMTP_PORT"} <= seen


def test_every_settings_field_is_filled_from_a_key():
    """The typed fields of Settings come from KEYS (Key.attr, or by name for the four that
    load_settings resolves itself): a field no key fills would be a setting nobody documents."""
    by_name = {"server_id": "SERVER_ID", "sites_file": "SITES_FILE", "db_path": "DB_PATH", "backup_dir": "BACKUP_DIR"}
    fields = {field.name for field in dataclasses.fields(Settings)} - {"env_path", "raw", "values", "warnings"}
    assert fields == {key.attr for key in KEYS if key.attr} | set(by_name)
    assert all(BY_NAME[name].attr is None for name in by_name.values())


def _load(tmp_path: Path, text: str) -> Settings:
    env = tmp_path / ".env"
    env.write_text(text, encoding="utf-8")
    return load_settings({"WPBACKUP_ENV": str(env)})


def _sample_lines() -> dict[str, str]:
    """Each key's `#KEY=value` line in .env.sample, as dotenv reads the value."""
    text = reference.render_env_sample()
    lines = re.findall(r"^#([A-Z][A-Z0-9_]+=.*)$", text, re.M)
    return {name: value or "" for name, value in dotenv_values(stream=io.StringIO("\n".join(lines))).items()}


def test_the_sample_as_it_is_loads_as_the_defaults(tmp_path):
    settings = _load(tmp_path, reference.render_env_sample())
    assert settings.warnings == ()
    assert settings.values == {key.name: key.default for key in KEYS}


def test_the_sample_uncommented_loads_and_shows_the_true_defaults(tmp_path):
    """Every `#KEY=value` line made live: the file still loads, without warnings, and each
    value shown is the key's default (or, for a key without one, its example)."""
    text = re.sub(r"^#([A-Z][A-Z0-9_]+=)", r"\1", reference.render_env_sample(), flags=re.M)
    settings = _load(tmp_path, text)
    assert settings.warnings == ()
    assert settings.s3_enabled and settings.value("SMTP_HOST") == "smtp.example.com"
    lines = _sample_lines()
    for key in KEYS:
        example = reference.DOCS[key.name].example
        if key.default is not None:  # a path's default is kept as text until resolved
            got = settings.values[key.name]
            assert got == (Path(key.default) if isinstance(got, Path) else key.default), key.name
        elif example:
            assert lines[key.name] == example
            assert settings.values[key.name] == parse_value(key, example), key.name
        else:
            assert lines[key.name] == "" and settings.values[key.name] is None, key.name


def test_every_key_is_in_the_sample_once_in_its_section_order():
    names = re.findall(r"^#([A-Z][A-Z0-9_]+)=", reference.render_env_sample(), re.M)
    assert sorted(names) == sorted(key.name for key in KEYS)
    order = [section.id for section in reference.SECTIONS]
    assert [order.index(reference.DOCS[name].section) for name in names] == sorted(
        order.index(reference.DOCS[name].section) for name in names)


def test_no_secret_has_an_example_value_but_the_url_placeholders():
    secrets = {key.name for key in KEYS if key.secret and reference.DOCS[key.name].example}
    assert secrets <= {"NOTIFY_URLS", "HEALTHCHECK_URL"}


def _row(markdown: str, name: str) -> list[str]:
    [line] = [line for line in markdown.splitlines() if line.startswith(f"| `{name}` |")]
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_the_key_table_gives_default_bounds_and_meaning():
    table = reference.render_keys_reference()
    assert _row(table, "ZSTD_LEVEL")[:3] == ["`ZSTD_LEVEL`", "`3`", "1 to 22"]
    assert _row(table, "S3_PART_SIZE_MB")[2] == "0 (automatic) or 5 to 5120"
    assert _row(table, "STALE_RUN_HOURS")[1:3] == ["`20`", "more than 0, at most 8760"]
    assert _row(table, "S3_CHECKSUM")[2] == "`none`, `crc32` (any case)"
    assert _row(table, "SERVER_ID")[1] == "the host name, lowercased and made valid"
    assert _row(table, "S3_BUCKET")[1] == "none"
    assert "A secret" in _row(table, "D1_API_TOKEN")[3] and "A secret" not in _row(table, "D1_ACCOUNT_ID")[3]
    assert "[s3-storage.md](s3-storage.md)" in table  # docs/ references become links


def test_the_sites_table_types_come_from_sites_py():
    table = reference.render_sites_reference()
    assert _row(table, "name")[1:3] == ["string", "required"]
    assert _row(table, "enabled")[1:3] == ["true or false", "`true`"]
    assert _row(table, "db.port")[1] == "integer or null"
    assert _row(table, "db.password")[2] == "`DB_PASSWORD` from `wp-config.php`"
    assert "`wp-content/wflogs`" in table


def test_a_new_kind_and_an_undocumented_key_still_render(monkeypatch):
    """A kind nobody described reads as its name; a key without words lands under Other,
    and the check names it (so the tests, and the generator, refuse it)."""
    monkeypatch.setattr(reference, "KEYS", KEYS + (Key("FANCY_NEW_THING", "fancy_kind", "x"),))
    sample = reference.render_env_sample()
    assert "# --- Other" in sample and "#FANCY_NEW_THING=x" in sample and "# Fancy kind." in sample
    assert "| `FANCY_NEW_THING` | `x` | fancy kind |" in reference.render_keys_reference()
    assert reference.undocumented() == [
        "FANCY_NEW_THING: in KEYS but not documented: add it to DOCS in wpbackup/config/reference.py"]


def _copies(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """Copies of the generated files, so that main() writes none of the real ones."""
    sample, doc, sites = tmp_path / ".env.sample", tmp_path / "configuration.md", tmp_path / "sites.json.sample"
    sample.write_text(reference.ENV_SAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    doc.write_text(reference.CONFIGURATION_DOC.read_text(encoding="utf-8"), encoding="utf-8")
    sites.write_text(reference.SITES_SAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(reference, "ENV_SAMPLE", sample)
    monkeypatch.setattr(reference, "CONFIGURATION_DOC", doc)
    monkeypatch.setattr(reference, "SITES_SAMPLE", sites)
    return sample, doc


def test_regenerating_writes_a_missing_or_edited_sites_sample(tmp_path, monkeypatch, capsys):
    _copies(tmp_path, monkeypatch)
    sites = reference.SITES_SAMPLE
    sites.write_text(sites.read_text().replace('"/var/www/blog"', '"/srv/blog"'))
    assert reference.main(["--check"]) == 1
    assert f"{sites}: out of date: {RUN}" in capsys.readouterr().err
    assert reference.main([]) == 0 and sites.read_text() == reference.render_sites_sample()
    sites.unlink()
    assert reference.main([]) == 0 and f"wrote {sites}" in capsys.readouterr().out
    assert reference.main(["--check"]) == 0


def test_check_names_a_hand_edit_and_regenerating_undoes_it(tmp_path, monkeypatch, capsys):
    sample, doc = _copies(tmp_path, monkeypatch)
    doc.write_text(doc.read_text().replace("| `ZSTD_LEVEL` | `3` |", "| `ZSTD_LEVEL` | `9` |"))
    prose = "Hand-written prose outside the markers stays.\n"
    doc.write_text(doc.read_text() + prose)
    assert reference.main(["--check"]) == 1
    assert f"{doc}: out of date: {RUN}" in capsys.readouterr().err
    assert reference.main([]) == 0
    assert "| `ZSTD_LEVEL` | `3` |" in doc.read_text() and doc.read_text().endswith(prose)
    assert reference.main(["--check"]) == 0


def test_generator_refuses_an_undocumented_key(tmp_path, monkeypatch, capsys):
    sample, _ = _copies(tmp_path, monkeypatch)
    before = sample.read_text()
    monkeypatch.setattr(reference, "KEYS", KEYS + (Key("FANCY_NEW_THING", "text"),))
    assert reference.main([]) == 1
    assert "reference: FANCY_NEW_THING: in KEYS but not documented" in capsys.readouterr().err
    assert sample.read_text() == before


def test_markers_missing_or_doubled_are_an_error():
    with pytest.raises(ValueError, match="needs exactly one <!-- keys:begin --> followed by one"):
        reference.replace_block("no markers here", "keys", "x", "doc.md")
    with pytest.raises(ValueError):
        reference.replace_block("<!-- keys:end --> <!-- keys:begin -->", "keys", "x", "doc.md")
    text = "a\n<!-- keys:begin -->\nold\n<!-- keys:end -->\nb\n"
    want = "a\n<!-- keys:begin -->\nnew\n<!-- keys:end -->\nb\n"
    assert reference.replace_block(text, "keys", "new", "doc.md") == want


@pytest.mark.parametrize("value", ["plain", "slack://T/B/X/#backups", "it's", " edge ", 'say "hi" \\o/'])
def test_a_sample_value_reads_back_as_written(value):
    line = f"K={reference.env_quoted(value)}"
    assert dotenv_values(stream=io.StringIO(line))["K"] == value


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", markdown, re.M)}


@pytest.mark.parametrize("doc", ["installation.md", "troubleshooting.md", "s3-storage.md"])
def test_the_links_of_a_doc_lead_somewhere(doc):
    """Every relative link (and its #anchor) of these docs names a file and heading that exist,
    so a renamed doc or heading shows here rather than to a reader."""
    path = REPO / "docs" / doc
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target) if target else path
        if not file.exists() or (anchor and anchor not in _anchors(file.read_text(encoding="utf-8"))):
            broken.append(link)
    assert broken == []


def test_the_installation_guide_starts_with_the_first_command():
    text = (REPO / "docs" / "installation.md").read_text(encoding="utf-8")
    assert text.index("./run.sh backup") < text.index("S3_BUCKET") < text.index("./run.sh systemd --install")
    assert "docs/installation.md" in (REPO / "README.md").read_text(encoding="utf-8")
