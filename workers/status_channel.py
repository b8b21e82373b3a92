"""Worker → supervisor reports: one pipe per worker process, so a worker killed in the middle of a report can
only spoil its own channel (the supervisor reads what is whole, then end-of-file), never the others'.

A ``multiprocessing.Queue`` shared by every worker would not do: its writers share one lock, which a worker
killed while holding it keeps forever, and half a message from it would corrupt the reports of all the others.
"""
from __future__ import annotations

import threading
from multiprocessing.connection import Connection
from typing import Any


class StatusSender:
    """The worker's end: ``put`` sends at once (thread-safe, blocking only while the pipe is full, which the
    supervisor empties every 0.1 s). Once the supervisor is gone, reports are dropped silently (the worker's
    ``ParentWatch`` notices and stops it)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._broken = False

    def __getstate__(self) -> dict[str, Any]:
        return {"conn": self._conn}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["conn"])

    def put(self, message: Any) -> None:
        with self._lock:
            if self._broken:
                return
            try:
                self._conn.send(message)
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                self._broken = True

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._broken = True

    # The queue interface the workers were written against: nothing is buffered here, nothing to wait for.
    def join_thread(self) -> None:
        pass

    def cancel_join_thread(self) -> None:
        pass


def status_channel(ctx: Any) -> tuple[Connection, StatusSender]:
    """(the supervisor's reading end, the worker's sender); after the worker started, the supervisor closes
    its copy of the sender, so the reading end sees end-of-file when the worker is gone."""
    reader, writer = ctx.Pipe(duplex=False)
    return reader, StatusSender(writer)
