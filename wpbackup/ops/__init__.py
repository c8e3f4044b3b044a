"""The ops room: what puts an install to work on a server and keeps it running by itself.

Now: the systemd units (units.py: the backup, report and weekly verify timers, rendered from
templates/systemd/ and installed). Next: deploy over SSH, the configure wizard, migrate.
"""
