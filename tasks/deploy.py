"""`deploy`: put this install on the servers of DEPLOY_HOSTS and set it up there.

    doit deploy          every host (each on its own: one that fails stops no other)
    doit deploy:HOST     one host; HOST is the host of its DEPLOY_HOSTS entry, with _PORT
                         appended when the entry gives a port (root@web1:2222 -> web1_2222)

Each host ends with one `SUMMARY deploy HOST: OK|NOT CONFIGURED|FAILED ...` line; any host
that is not OK fails its task, so the exit status is non-zero. The work is in
wpbackup/ops/deploy.py (this side) and wpbackup/ops/remote.py (the server's side).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from doit.exceptions import TaskFailed

from .context import CONTEXT

if TYPE_CHECKING:
    from wpbackup.ops import deploy

_output = threading.Lock()  # two hosts deploy at once (doit's two worker threads)
_planning = threading.Lock()
_plans: list[deploy.Plan] = []


def _say(line: str) -> None:
    with _output:
        print(line, flush=True)


def _plan() -> deploy.Plan:
    """One plan (bundle list and checksum) for every host of this run."""
    from wpbackup.ops import deploy

    with _planning:
        if not _plans:
            _plans.append(deploy.make_plan(CONTEXT.settings))
        return _plans[0]


def deploy_to(entry: str):
    """Deploy to one host; its summary line, and a failed task unless it is OK."""
    from wpbackup.ops import deploy

    outcome = deploy.deploy_host(_plan(), deploy.parse_host(entry), _say)
    _say(outcome.line)
    return True if outcome.ok else TaskFailed(outcome.line)


def _refuse(message: str):
    return TaskFailed(message)


def task_deploy():
    """Deploy the tool and its units to every host of DEPLOY_HOSTS (deploy:HOST: one)."""
    entries = CONTEXT.settings.value("DEPLOY_HOSTS")
    hosts, problems = [], []
    if entries:  # a controller: a backup server (no DEPLOY_HOSTS) never loads the deploy code
        from wpbackup.ops import deploy

        hosts, problems = deploy.parse_hosts(entries)
    if problems or not hosts:
        message = "; ".join(problems) or (
            "DEPLOY_HOSTS is not set: nothing to deploy to (set it in .env: user@host or user@host:port, "
            "comma-separated; docs/deployment.md)")
        return {"actions": [(_refuse, [message])], "uptodate": [False], "verbosity": 2,
                "doc": "Deploy the tool and its units to every host of DEPLOY_HOSTS"}
    return _host_tasks(hosts)


def _host_tasks(hosts: list[deploy.Host]):
    yield {"name": None, "doc": "Deploy the tool and its units to every host of DEPLOY_HOSTS"}
    for host in hosts:
        yield {
            "name": host.name,
            "doc": f"Deploy to {host.entry}: code, deploy/{host.name}/ config, venv, units, smoke check",
            "actions": [(deploy_to, [host.entry])],
            "uptodate": [False],
            "verbosity": 2,
            "io": {"capture": False},  # two hosts at once: doit's capture would swap sys.stdout
        }
