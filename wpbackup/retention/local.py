"""LOCAL_KEEP: which of a site's archives stay on the local disk.

    BACKUP_DIR/{site}-backup-*.tar.zst -> newest LOCAL_KEEP kept -> older ones removed,
    except one whose S3 copy failed the latest verify (it may be the only good copy)

Applied by the backup's compress and catalog stages and by `doit prune`.
"""

from __future__ import annotations

import re

from wpbackup.config.settings import Settings
from wpbackup.config.sites import Site
from wpbackup.console import log
from wpbackup.fleet import catalog


def archive_pattern(site_name: str) -> re.Pattern:
    """The name of one of a site's archives, {site}-backup-{YYYYMMDD-HHMMSS}.tar.zst, whole."""
    return re.compile(re.escape(site_name) + r"-backup-\d{8}-\d{6}\.tar\.zst")


def local_archives(settings: Settings, site_name: str) -> list[str]:
    """A site's archives in BACKUP_DIR, oldest first (names sort by their UTC stamps)."""
    pattern = archive_pattern(site_name)
    return sorted(p.name for p in settings.backup_dir.glob(f"{site_name}-backup-*.tar.zst")
                  if pattern.fullmatch(p.name))


def waiting_uploads(settings: Settings, site_name: str) -> list[str]:
    """Local archives of a site that never reached S3 (no s3_archives row), in S3 mode: the
    open run's archive until its upload succeeds, and those of runs abandoned meanwhile."""
    if not settings.s3_enabled:
        return []
    sent = catalog.archived_names(settings.db_path, settings.server_id, site_name)
    return [name for name in local_archives(settings, site_name) if name not in sent]


def local_excess(settings: Settings, site_name: str) -> list[str]:
    """Local archives of a site beyond the newest LOCAL_KEEP, oldest first, that may go.

    Every local archive counts, uploaded or not: a week of S3 outage must not leave a week of
    full archives on the disk (the newest LOCAL_KEEP stay, so the newest always does). The one
    exception is an archive whose S3 copy failed the latest `verify --remote`: the local one may
    be the only good copy, so it stays beyond LOCAL_KEEP."""
    excess = local_archives(settings, site_name)[:-settings.local_keep]
    if not excess:
        return []
    damaged = catalog.failed_s3_verifications(settings.db_path, settings.server_id, site_name)
    return [name for name in excess if name not in damaged]


def remove_local(settings: Settings, names: list[str]) -> list[str]:
    """Delete archives (and their .sha256 and .frames) from BACKUP_DIR; returns the names now gone. One
    that cannot be deleted is warned about and left: the next LOCAL_KEEP tries again."""
    removed = []
    for name in names:
        try:
            for path in (settings.backup_dir / name, settings.backup_dir / f"{name}.sha256",
                         settings.backup_dir / f"{name}.frames"):
                path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s from %s: %s", name, settings.backup_dir, exc.strerror)
        else:
            removed.append(name)
    return removed


def apply_local_keep(settings: Settings, site: Site, current: str) -> list[str]:
    """Apply LOCAL_KEEP to a site's local archives (never removing ``current``, this run's)."""
    return remove_local(settings, [name for name in local_excess(settings, site.name) if name != current])
