"""The fleet: what every server shares.

    d1.py    Cloudflare D1's HTTP API (envelope, limits, retries, readable errors)
    sync.py  the two-way sync of the local catalog (backups.db) with the fleet's D1 database
"""
