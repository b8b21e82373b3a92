"""The worker processes of `vidrec serve` as the supervisor sees them: how one is started (its control queue,
its report pipe) and when a dead one is started again (one restart policy for ingest and inference)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Callable

from workers.status_channel import status_channel


@dataclass(frozen=True, slots=True)
class Restart:
    """Start the dead process again after ``delay_s``; ``streak``: restarts in a row before it (0 once it had
    run long enough to count as stable), so the new process is restart number ``streak + 1``."""

    delay_s: float
    streak: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Too many quick deaths in a row: a restart would only die again."""

    deaths: int


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Backoff after a death: ``first_delay_s`` doubling per restart in a row, at most ``max_delay_s``. A
    process that ran ``stable_after_s`` before dying starts a new streak (a new failure, not a crash loop).
    With ``max_streak`` set, a process that dies quickly after that many restarts in a row is given up."""

    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    stable_after_s: float = 60.0
    max_streak: int | None = None

    def after_death(self, restarts: int, uptime_s: float) -> Restart | GiveUp:
        """What to do when a process that was restart number ``restarts`` in a row (0: the first start) died
        after running ``uptime_s``."""
        stable = uptime_s > self.stable_after_s
        if self.max_streak is not None and restarts >= self.max_streak and not stable:
            return GiveUp(deaths=restarts + 1)
        streak = 0 if stable else restarts
        return Restart(delay_s=min(self.first_delay_s * 2 ** streak, self.max_delay_s), streak=streak)


# An ingest process's streams wait for it (live ones are added again), so it is always started again; an
# inference worker that keeps dying at once (a broken model, a GPU gone) ends the service instead.
INGEST_RESTARTS = RestartPolicy()
INFERENCE_RESTARTS = RestartPolicy(max_streak=5)


@dataclass
class Child:
    """One worker process: its control queue (supervisor → worker) and report pipe (worker → supervisor)."""

    name: str
    process: Any  # multiprocessing's Process
    control: Any  # multiprocessing's Queue
    reader: Connection
    restarts: int = 0  # restarts in a row before this process (0: a first start or after a stable run)
    restart_at: float | None = None  # monotonic; set once its death was seen: when to start it again
    started_at: float = field(default_factory=time.monotonic)

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    @property
    def pid(self) -> int | None:
        """Its pid while it runs; None once it is gone."""
        return self.process.pid if self.process.is_alive() else None

    def uptime_s(self, now: float) -> float:
        return now - self.started_at


def spawn(ctx: Any, name: str, target: Callable[..., None], args: tuple[Any, ...], log_level: int,
          restarts: int = 0) -> Child:
    """Start ``target(*args, control_queue, report_sender, log_level)`` as process ``vidrec-<name>``."""
    control = ctx.Queue()
    reader, sender = status_channel(ctx)
    process = ctx.Process(target=target, name=f"vidrec-{name}", args=(*args, control, sender, log_level), daemon=True)
    process.start()
    sender.close()  # the worker holds its own copy; ours would hide its end-of-file
    return Child(name, process, control, reader, restarts=restarts)
