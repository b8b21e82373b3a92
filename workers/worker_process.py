"""What every worker process of `vidrec serve` does the same way inside itself: its logging and signals, and
noticing that the supervisor is gone. (Starting and restarting workers is the supervisor's:
workers/children.py.)"""
from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
from typing import Any


class ParentWatch:
    """Whether the supervisor still runs, from multiprocessing's parent sentinel: right even when it died
    before this process got going (then ``os.getppid()`` already names the reaper, not the supervisor)."""

    def __init__(self) -> None:
        self._parent = multiprocessing.parent_process()
        self._gone = False

    def gone(self) -> bool:
        if not self._gone and self._parent is not None:
            self._gone = not self._parent.is_alive()
        return self._gone


def detach_queues(*queues: Any) -> None:
    """The supervisor is gone and nobody reads what this process puts: exit without waiting for the queues'
    feeder threads, which would block on a full pipe forever."""
    for q in queues:
        q.cancel_join_thread()


def setup_child(name: str, log_level: int) -> None:
    # The supervisor coordinates shutdown: a terminal's Ctrl-C or a TERM to the whole process group must not
    # cut this process's drain short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=f"vidrec[{name}]: %(message)s", stream=sys.stderr, force=True)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.WARNING)
