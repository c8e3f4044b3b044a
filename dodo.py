"""wordpress-backup: `doit list` shows every command; `doit backup` backs up every site."""

from tasks import *  # noqa: F401,F403  (task creators and DOIT_CONFIG)
