"""supervisord event listener: when a program's main process exits on its own, kill what is left
of its process group.

Why: ``mlflow server`` (like gunicorn, and any server that forks workers) is a parent that
starts the process that really listens. supervisord kills the whole group when *it* stops a
program (``killasgroup``), but when the parent dies by itself (``kill -9``, OOM killer, a
crash) the child lives on as an orphan that still holds the port, and every supervised restart
then fails with "address already in use" until someone finds the orphan by hand. supervisord
starts each program as the leader of its own process group (pgid == pid), so the group of an
exited main process is exactly the orphans it left; nothing else can be in it.

supervisord has no option for this; an event listener on ``PROCESS_STATE_EXITED`` is its
documented extension point (``supervisor.childutils``), so we use that rather than a wrapper
process, which could itself be killed and leave the same orphan.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping

from supervisor import childutils

# The event this listener subscribes to (supervisord's [eventlistener:x] ``events=``).
EVENTS = "PROCESS_STATE_EXITED"


def orphan_group(event_name: str, payload: Mapping[str, str]) -> int | None:
    """The process group to kill for one event: the exited main process's pid, which is its
    group's id. None for any other event or a payload without a usable pid."""
    if event_name != EVENTS:
        return None
    try:
        pid = int(payload.get("pid", ""))
    except ValueError:
        return None
    return pid if pid > 1 else None


def kill_group(pgid: int) -> bool:
    """SIGKILL every process left in group ``pgid``; True if any was there."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def main() -> None:  # pragma: no cover - exercised under a real supervisord in the integration tests
    """The listener loop: READY, read one event, act, RESULT OK — forever (supervisord restarts it)."""
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        body = childutils.get_headers(payload.split("\n", 1)[0])
        pgid = orphan_group(headers.get("eventname", ""), body)
        if pgid is not None and kill_group(pgid):
            print(f"{body.get('processname', '?')}: killed the orphans of exited pid {pgid}", file=sys.stderr,
                  flush=True)
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":  # pragma: no cover
    main()
