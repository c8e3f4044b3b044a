"""The fleet: what every server records and shares.

    catalog.py      backups.db, the local catalog (backup_log, s3_archives, daily_emails)
    status.py       `doit status`: the fleet's last backups, their age and where they are
    healthcheck.py  dead-man's-switch pings
    d1.py           Cloudflare D1's HTTP API (envelope, limits, retries, readable errors)
    sync.py         the two-way sync of the local catalog with the fleet's D1 database
"""
