"""wordpress-backup: the work behind the doit graph.

Flow: settings -> tasks (the doit graph, in ``tasks/``) -> steps (this package) -> catalog.

Nothing in this package imports doit: every function here can be called and tested on its
own, and the graph in ``tasks/`` only decides which of them run, in which order, and when a
stage counts as done.
"""

__version__ = "0.1.0"
