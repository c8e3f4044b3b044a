"""wordpress-backup: the work behind the doit graph.

Flow: settings -> tasks (the doit graph, in ``tasks/``) -> steps (this package) -> catalog.

Nothing in this package imports doit: every function here can be called and tested on its
own, and the graph in ``tasks/`` only decides which of them run, in which order, and when a
stage counts as done.
"""

import sys

if sys.version_info < (3, 10):  # noqa: UP036 (no pip metadata says so: an install is a folder)
    raise SystemExit(f"wordpress-backup needs Python 3.10 or newer; {sys.executable} is "
                     f"{sys.version.split()[0]} (use the distribution's python3, as run.sh does)")

__version__ = "0.1.0"
