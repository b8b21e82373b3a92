"""The supervisor of `vidrec serve`: starts, watches, restarts and stops the worker processes.

Process layout (multiprocessing 'spawn', one process tree, so one resource tracker for every shared-memory
segment, as stream/transport.py requires):

    supervisor (this process: registry of streams, HTTP API thread, signals)
      ├─ inference      one: FrameConsumer → Batcher → ShituSystem → AsyncSinks (workers/inference.py)
      └─ ingest-0..N-1  Service.ingest_processes: a thread per stream → FrameProducer (workers/ingest.py)

Queues: one frame queue (refs to shared-memory slots; every producer → the consumer), one control queue per
child (supervisor → child), one status queue (children → supervisor: states, counters, confirmations). The
supervisor owns the run id, so it can remove a dead producer's segments (``unlink_stream_segments``) and sweep
the run's segments at exit (``unlink_run_segments``).

Streams: each goes to the ingest process with the fewest streams. Adding one tells inference its plan (live
or file) first, then the ingest process; removing one stops its thread, whose producer ends the stream with
an ``EndOfStream`` after inference took what was written. State changes reported by ingest are forwarded to
inference, so results carry ``stream_state``.

Failures: an ingest process that dies is started again (backoff 1 s doubling to 30 s); its live streams are
added again, its unfinished file streams are marked ``failed`` (not replayed: that would publish duplicates).
If the inference process dies the service cannot go on (the frame queue may be left locked): it stops the
ingest processes and exits 1 with one line naming the exit code.

Stopping (SIGTERM or SIGINT; a second one stops without draining): the API refuses changes; every ingest
process closes its sources and ends its producers, which wait (up to ``Service.drain_timeout_s``) for inference
to take the frames already written; once they have exited (so every ref is on the queue), inference gets
``Drain``: it processes what is left, hands every result to the sinks, closes them (each flushes, up to
``Service.sink_close_timeout_s``) and reports its final counters. The supervisor logs them as one JSON line
(``final: {...}``), sweeps the run's shared memory and returns 0 (1 when a sink could not deliver everything
or a worker failed).
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait as wait_for_connections
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from config import VidrecConfig
from config.schema import StreamSpec
from stream.errors import SinkError
from workers.http_api import ApiServer
from workers.service_errors import Conflict, Invalid, NotFound, Unavailable
from workers.inference import (
    Drain,
    InferenceExited,
    InferenceFatal,
    InferenceReady,
    InferenceSettings,
    InferenceStats,
    StreamAdded,
    StreamFinished,
    StreamInference,
    StreamState,
    Watch,
    inference_main,
)
from workers.ingest import (
    AddStream,
    IngestExited,
    IngestSettings,
    IngestStats,
    RemoveStream,
    StopIngest,
    StreamCountersSnapshot,
    StreamPlan,
    StreamRemoved,
    StreamStateChanged,
    file_path,
    ingest_main,
    resolve_kind,
)
from stream.transport import make_frame_queue, new_run_id, unlink_run_segments, unlink_stream_segments
from workers import metrics as m
from workers.snapshots import Snapshot, SnapshotStore
from workers.status_channel import status_channel

log = logging.getLogger("vidrec")

_RESTART_BACKOFF_S = (1.0, 30.0)  # first delay, longest delay before an ingest process is started again
_STABLE_AFTER_S = 60.0  # a process that ran this long before dying starts again after the first delay
_INFERENCE_MAX_RESTARTS = 5  # inference deaths in a row, each within _STABLE_AFTER_S of its start: give up


class ServiceError(Exception):
    """The service cannot start or go on (a worker failed to start, the HTTP address is taken...): one line."""


def plan_from_spec(spec: StreamSpec) -> StreamPlan:
    """A validated stream spec as the workers' plan; a file stream's path must exist."""
    kind = resolve_kind(spec.url, spec.kind)
    if kind == "file" and not Path(file_path(spec.url)).exists():
        raise ValueError(f"stream {spec.id!r}: {file_path(spec.url)}: no such file or directory")
    return StreamPlan(id=spec.id, url=spec.url, kind=kind, every_nth=spec.every_nth, clock_stamp=spec.clock_stamp)


def spec_error(exc: ValidationError) -> str:
    """A pydantic error on a stream spec as one line naming the field."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "stream"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = f"unknown field (allowed: {', '.join(StreamSpec.model_fields)})"
    elif error["type"] == "missing":
        message = "missing"
    return f"{where}: {message}"


_INGEST_COUNTERS = ("decoded", "skipped", "dropped_source", "reconnects", "decode_errors")


def _snapshot_counts(snap: StreamCountersSnapshot) -> Counter:
    """An ingest instance's counters, flat (the ring's drops as ``ring:<reason>``)."""
    counts = Counter({name: getattr(snap, name) for name in _INGEST_COUNTERS})
    if snap.transport is not None:
        counts["written"] += snap.transport.written
        counts["taken"] += snap.transport.taken
        for reason, n in snap.transport.dropped.items():
            counts[f"ring:{reason}"] += n
    return counts


@dataclass
class _Entry:
    plan: StreamPlan
    ingest: int
    first_index: int = 0
    state: str = "starting"
    reason: str | None = None
    since: float = field(default_factory=time.time)
    removing: bool = False
    ingest_stats: StreamCountersSnapshot | None = None
    inference: StreamInference | None = None


@dataclass
class _Child:
    name: str
    process: Any
    control: Any
    restarts: int = 0
    restart_at: float | None = None
    started_at: float = field(default_factory=time.monotonic)
    reader: Any = None  # its report pipe


class Supervisor:
    def __init__(
        self,
        cfg: VidrecConfig,
        plans: list[StreamPlan],
        *,
        http: tuple[str, int] | None = None,
        api_token: str | None = None,
        log_level: int = logging.INFO,
    ) -> None:
        self.cfg = cfg
        self.service = cfg.Service
        self._initial = plans
        self._http_addr = http
        self._api_token = api_token
        self._log_level = log_level
        self._ctx = mp.get_context("spawn")
        self.run_id = new_run_id()
        self._lock = threading.RLock()
        self._streams: dict[str, _Entry] = {}
        # Per stream id, for the service's lifetime: counters of ingest instances that ended (a restarted
        # process, a stream removed and added again), and where a live stream's frame indices go on.
        self._past: dict[str, Counter] = {}
        self._next_index: dict[str, int] = {}
        self._stop = threading.Event()
        self._abort = False
        self._phase = "starting"  # starting | serving | draining | stopped
        self._exit_code = 0
        self._failure: str | None = None
        self._inference: _Child | None = None
        self._ingest: list[_Child] = []
        self._inference_stats: InferenceStats | None = None
        # What earlier inference processes (before a restart) counted: kept, so counters never go back.
        self._inference_past: InferenceStats | None = None
        self._stream_past: dict[str, StreamInference] = {}
        self._inference_incarnation = 0
        self._inference_exit: InferenceExited | None = None
        self._ingest_exited: set[int] = set()
        self._ready: InferenceReady | None = None
        self._fatal: str | None = None
        self._api: ApiServer | None = None
        self._sink_names = [name for name, on in (("kafka", cfg.Kafka.bootstrap), ("redis", cfg.Redis.url)) if on]
        svc = self.service
        self._ingest_settings = IngestSettings(
            run_id=self.run_id, slots=svc.slots_per_stream, max_frame_bytes=svc.max_frame_bytes,
            stats_interval_s=svc.stats_interval_s, drain_timeout_s=svc.drain_timeout_s,
            live=svc.live.model_dump(),
        )
        self._inference_settings = InferenceSettings(
            run_id=self.run_id, max_batch=svc.max_batch or self.cfg.Global.batch_size, max_wait_s=svc.max_batch_wait_ms / 1000.0,
            staleness_s=svc.staleness_ms / 1000.0, live_backlog=svc.live_backlog,
            live_max_age_s=svc.live_max_age_ms / 1000.0, sink_queue_size=svc.sink_queue_size,
            sink_close_timeout_s=svc.sink_close_timeout_s, stats_interval_s=svc.stats_interval_s,
            overlay_fps=svc.overlay_fps, overlay_max_width=svc.overlay_max_width,
            overlay_jpeg_quality=svc.overlay_jpeg_quality,
        )
        self.snapshots = SnapshotStore()
        self._restart_totals: Counter = Counter()
        self._collector = m.ServiceCollector(self.metrics_snapshot)

    # ================================================================================ lifecycle ==========
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code. Raises ServiceError when it cannot start."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self._frames = make_frame_queue(self._ctx, streams=self.service.max_streams, slots=self.service.slots_per_stream)
        self._readers: dict[Connection, str] = {}  # each worker's report pipe -> its name
        try:
            if self._http_addr is not None:
                host, port = self._http_addr
                try:
                    self._api = ApiServer(host, port, self, token=self._api_token,
                                          read_auth=self.service.http_read_auth, gallery=self._gallery_api(),
                                          results=self._result_follower())
                except OSError as exc:
                    raise ServiceError(f"cannot serve the HTTP API on {host}:{port}: {exc.strerror or exc}") from None
                self._api.start()
                log.info("HTTP API on http://%s:%d", *self._api.address)
            if not self._start_inference():
                return self._finish()
            for index in range(self.service.ingest_processes):
                self._ingest.append(self._spawn_ingest(index))
            with self._lock:
                for plan in self._initial:
                    self._add(plan)
                self._phase = "serving"
            log.info("serving %d stream(s) with %d ingest process(es) (run %s)",
                     len(self._initial), len(self._ingest), self.run_id)
            while not self._stop.is_set():
                self._pump(0.1)
                self._watch_children()
            return self._finish()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._cleanup()

    def _gallery_api(self) -> Any:
        if not self.cfg.IndexProcess.index_dir:
            return None
        from workers.gallery_api import GalleryService

        return GalleryService(self.cfg, mp_context=self._ctx)

    def _result_follower(self) -> Any:
        if not self.cfg.Redis.url:
            return None
        from stream.sinks.redis import redis_auth_kwargs
        from workers.overlay_events import ResultFollower

        try:
            auth = redis_auth_kwargs(self.cfg.Redis)
        except SinkError as exc:
            raise ServiceError(str(exc)) from None
        return ResultFollower(self.cfg.Redis.url, self.cfg.Redis.key_prefix, **auth)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self._stop.is_set():
            if not self._abort:
                self._abort = True
                log.warning("%s again: stopping without draining", signal.Signals(signum).name)
            return
        log.info("%s: stopping (draining in-flight frames to the sinks)", signal.Signals(signum).name)
        self._stop.set()

    def _spawn_inference(self, incarnation: int = 0, restarts: int = 0) -> _Child:
        control = self._ctx.Queue()
        reader, sender = status_channel(self._ctx)
        settings = replace(self._inference_settings, incarnation=incarnation)
        process = self._ctx.Process(
            target=inference_main, name="vidrec-inference",
            args=(settings, self.cfg, self._frames, control, sender, self._log_level),
            daemon=True,
        )
        process.start()
        sender.close()  # the worker holds its own copy; ours would hide its end-of-file
        self._readers[reader] = "inference"
        return _Child("inference", process, control, restarts=restarts, reader=reader)

    def _start_inference(self) -> bool:
        """Start the inference process and wait for its models and sinks; False when a signal came first."""
        self._inference = self._spawn_inference()
        process = self._inference.process
        deadline = time.monotonic() + self.service.startup_timeout_s
        while self._ready is None:
            self._pump(0.1)
            if self._fatal is not None:
                process.join(5.0)
                raise ServiceError(self._fatal)
            if self._ready is not None:
                break
            if not process.is_alive():
                self._pump(0.2)
                if self._fatal is not None:
                    raise ServiceError(self._fatal)
                raise ServiceError(f"inference worker exited with code {process.exitcode} while starting")
            if self._stop.is_set():
                return False
            if time.monotonic() > deadline:
                raise ServiceError(f"inference worker not ready within Service.startup_timeout_s={self.service.startup_timeout_s:g}s")
        log.info("inference ready (pid %d%s)", self._ready.pid,
                 "" if self._ready.gallery_version is None else f", gallery version {self._ready.gallery_version}")
        return True

    def _spawn_ingest(self, index: int, restarts: int = 0) -> _Child:
        control = self._ctx.Queue()
        reader, sender = status_channel(self._ctx)
        process = self._ctx.Process(
            target=ingest_main, name=f"vidrec-ingest-{index}",
            args=(index, self._ingest_settings, self._frames, control, sender, self._log_level),
            daemon=True,
        )
        process.start()
        sender.close()
        self._readers[reader] = f"ingest-{index}"
        return _Child(f"ingest-{index}", process, control, restarts=restarts, reader=reader)

    def _finish(self) -> int:
        """Drain and stop every child; log the final counters; returns the exit code."""
        with self._lock:
            self._phase = "draining"
        abort = self._abort
        started = time.monotonic()
        for child in self._ingest:
            if child.process.is_alive():
                child.control.put(StopIngest(abort=abort))
        ingest_deadline = started + (2.0 if abort else self.service.drain_timeout_s + 10.0)
        interrupted = lambda: self._abort and not abort  # noqa: E731 - a second signal came while draining
        self._wait(lambda: all(not c.process.is_alive() for c in self._ingest) or interrupted(), ingest_deadline)
        for child in self._ingest:
            if child.process.is_alive():
                log.warning("%s did not stop in time: killed", child.name)
                child.process.kill()
            child.process.join(2.0)
        inference = self._inference
        if inference is not None and self._ready is None and inference.process.is_alive():
            inference.process.kill()  # stopped while the models were loading: nothing to drain
            inference.process.join(5.0)
        if inference is not None and inference.process.is_alive():
            inference.control.put(Drain())
            sinks = len(self._sink_names)
            deadline = time.monotonic() + (3.0 if abort else 30.0 + sinks * self.service.sink_close_timeout_s)
            self._wait(lambda: self._inference_exit is not None or not inference.process.is_alive() or interrupted(),
                       deadline)
            inference.process.join(0.5 if self._abort else 5.0)
            if inference.process.is_alive():
                log.warning("inference did not stop in time: killed")
                inference.process.kill()
                inference.process.join(2.0)
        self._pump(0.0)
        final = self._snapshot_all()
        exited = self._inference_exit
        if exited is not None and not exited.sinks_clean:
            self._set_failure("a sink did not deliver every result (see sinks in the final counters)")
        elif exited is None and self._ready is not None and self._failure is None:
            self._set_failure("inference did not report its final counters")
        final["exit_code"] = self._exit_code
        if self._failure:
            final["failure"] = self._failure
        log.info("final: %s", json.dumps(final, separators=(",", ":"), default=str))
        with self._lock:
            self._phase = "stopped"
        log.info("stopped after %.1fs of draining", time.monotonic() - started)
        return self._exit_code

    def _cleanup(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None
        for child in ([self._inference] if self._inference else []) + self._ingest:
            if child.process.is_alive():
                child.process.kill()
                child.process.join(2.0)
        removed = unlink_run_segments(self.run_id)
        if removed:
            log.info("removed %d shared-memory segment(s) left by the workers", len(removed))
        if self.cfg.Kafka.bootstrap and self.cfg.Kafka.spool_max_bytes > 0:
            from stream.sinks.spool import discard_spool_dir, spool_dirs_of_run
            from workers.outputs import spool_base

            for folder in spool_dirs_of_run(spool_base(self.cfg.Kafka), self.run_id):  # left by a killed worker
                lost = discard_spool_dir(folder)
                if lost:
                    log.error("%s: %d spooled result(s) never published (lost)", folder, lost)

    def _set_failure(self, message: str) -> None:
        if self._failure is None:
            self._failure = message
            log.error("%s", message)
        self._exit_code = 1

    def _wait(self, condition: Callable[[], bool], deadline: float) -> bool:
        """Pump the status queue (children block on a full pipe otherwise) until ``condition`` or ``deadline``."""
        while not condition():
            if time.monotonic() >= deadline:
                return False
            self._pump(0.05)
        return True

    # ================================================================================ children ===========
    def _watch_children(self) -> None:
        inference = self._inference
        if inference is not None and not inference.process.is_alive():
            self._watch_inference(inference)
            if self._stop.is_set():
                return
        now = time.monotonic()
        for index, child in enumerate(self._ingest):
            if child.process.is_alive():
                continue
            if child.restart_at is None:
                if now - child.started_at > _STABLE_AFTER_S:
                    child.restarts = 0  # it ran well for a while: this is a new failure, not a crash loop
                delay = min(_RESTART_BACKOFF_S[0] * 2 ** child.restarts, _RESTART_BACKOFF_S[1])
                child.restart_at = now + delay
                log.error("%s (pid %s) died with exit code %s: restarting it in %.0fs",
                          child.name, child.process.pid, child.process.exitcode, delay)
                self._orphan_streams(index, child)
            elif now >= child.restart_at:
                with self._lock:
                    self._ingest[index] = fresh = self._spawn_ingest(index, restarts=child.restarts + 1)
                    self._restart_totals[child.name] += 1
                    for entry in self._streams.values():
                        if entry.ingest == index and entry.plan.kind == "live":
                            entry.first_index = self._first_index(entry.plan)
                            self._inference_control(StreamAdded(entry.plan))
                            fresh.control.put(AddStream(entry.plan, entry.first_index))

    def _watch_inference(self, child: _Child) -> None:
        """The inference worker is not running: schedule its restart, start it when due, or give up."""
        now = time.monotonic()
        if child.restart_at is None:
            code = child.process.exitcode
            self._drain_reports(child)  # what it reported before it died counts
            if self._fatal is not None:  # a restarted worker could not load its models or reach its sinks
                self._set_failure(f"inference worker could not start again: {self._fatal}: stopping")
            elif child.restarts >= _INFERENCE_MAX_RESTARTS and now - child.started_at < _STABLE_AFTER_S:
                self._set_failure(f"inference worker died (exit code {code}) {child.restarts + 1} times in a row: stopping")
            if self._failure is not None or self._phase != "serving":
                if self._failure is None:
                    self._set_failure(f"inference worker died (exit code {code}) while {self._phase}: stopping")
                self._abort = True
                self._stop.set()
                return
            if now - child.started_at > _STABLE_AFTER_S:
                child.restarts = 0
            delay = min(_RESTART_BACKOFF_S[0] * 2 ** child.restarts, _RESTART_BACKOFF_S[1])
            child.restart_at = now + delay
            log.error("inference worker (pid %s) died with exit code %s: restarting it in %.0fs; the results it had "
                      "not handed to the sinks are lost (each stream's seq shows the gap)", child.process.pid, code, delay)
            with self._lock:
                self._fold_inference()
                self._ready = None
            _free_queue_reader(self._frames)
            return
        if now < child.restart_at:
            return
        with self._lock:
            self._inference_incarnation += 1
            self._restart_totals["inference"] += 1
            fresh = self._spawn_inference(self._inference_incarnation, restarts=child.restarts + 1)
            self._inference = fresh
            for entry in self._streams.values():
                if entry.removing or entry.state in ("ended", "failed"):
                    continue
                fresh.control.put(StreamAdded(entry.plan))
                fresh.control.put(StreamState(entry.plan.id, entry.state))
        log.info("inference worker started again (pid %d, run id %s.%d)", fresh.process.pid, self.run_id,
                 self._inference_incarnation)

    def _fold_inference(self) -> None:
        """A dead inference worker's counters join the run's totals (its stream views restart from zero)."""
        stats = self._inference_stats
        if stats is not None:
            self._inference_past = _merge_stats(self._inference_past, replace(stats, streams={}))
        for sid, entry in self._streams.items():
            counters = entry.inference if entry.inference is not None else (stats.streams.get(sid) if stats else None)
            if counters is not None:
                self._stream_past[sid] = _merge_stream(self._stream_past.get(sid), counters)
            entry.inference = None
        self._inference_stats = None
        self._inference_exit = None

    def _orphan_streams(self, index: int, child: _Child) -> None:
        """The streams of a dead ingest process: segments removed; live ones wait for the restart."""
        reason = f"{child.name} died (exit code {child.process.exitcode})"
        with self._lock:
            for sid, entry in list(self._streams.items()):
                if entry.ingest != index:
                    continue
                unlink_stream_segments(self.run_id, sid)
                self._fold(entry, entry.ingest_stats)
                if entry.removing:
                    del self._streams[sid]
                elif entry.plan.kind == "file" and entry.state not in ("ended", "failed"):
                    self._set_state(entry, "failed", f"{reason}; file streams are not replayed")
                elif entry.plan.kind == "live":
                    self._set_state(entry, "reconnecting", f"{reason}; restarting")

    def _inference_control(self, message: Any) -> None:
        if self._inference is not None and self._inference.process.is_alive():
            self._inference.control.put(message)

    def _set_state(self, entry: _Entry, state: str, reason: str | None) -> None:
        entry.state = state
        entry.reason = reason if reason is not None else entry.reason
        entry.since = time.time()
        self._inference_control(StreamState(entry.plan.id, state))

    # ================================================================================ status queue =======
    def _pump(self, timeout_s: float) -> None:
        """Handle every report that is ready, waiting up to ``timeout_s`` for the first."""
        wait = timeout_s
        while True:
            readers = list(self._readers)
            if not readers:
                if wait > 0:
                    time.sleep(wait)
                return
            ready = wait_for_connections(readers, timeout=wait)
            if not ready:
                return
            wait = 0.0
            for conn in ready:
                self._receive_from(conn)

    def _receive_from(self, conn: Any) -> bool:
        """One report from a worker's pipe; False (and the pipe closed) at its end: the worker is gone."""
        try:
            message = conn.recv()
        except (EOFError, OSError):
            self._readers.pop(conn, None)
            conn.close()
            return False
        except Exception as exc:  # noqa: BLE001 - half a report from a killed worker: drop its pipe, not the service
            log.warning("report from %s unreadable (%s): its pipe is closed", self._readers.get(conn), exc)
            self._readers.pop(conn, None)
            conn.close()
            return False
        self._handle(message)
        return True

    def _drain_reports(self, child: _Child) -> None:
        """Everything a dead worker managed to report, up to the end of its pipe."""
        conn = child.reader
        while conn is not None and conn in self._readers:
            if not conn.poll(1.0):
                break
            if not self._receive_from(conn):
                break

    def _handle(self, message: Any) -> None:
        with self._lock:
            if isinstance(message, StreamStateChanged):
                entry = self._streams.get(message.stream_id)
                if entry is not None:
                    entry.state = message.state
                    entry.reason = message.reason if message.reason is not None else entry.reason
                    entry.since = message.at
                    self._inference_control(StreamState(message.stream_id, message.state))
            elif isinstance(message, IngestStats):
                for sid, snap in message.streams.items():
                    entry = self._streams.get(sid)
                    if entry is not None and entry.ingest == message.process:
                        entry.ingest_stats = snap
            elif isinstance(message, InferenceStats):
                self._inference_stats = message
                for sid, counters in message.streams.items():
                    entry = self._streams.get(sid)
                    if entry is not None:
                        entry.inference = counters
            elif isinstance(message, StreamFinished):
                entry = self._streams.get(message.stream_id)
                if entry is not None:
                    entry.inference = message.counters
            elif isinstance(message, StreamRemoved):
                entry = self._streams.get(message.stream_id)
                if entry is not None and entry.removing:
                    self._fold(entry, message.final)
                    del self._streams[message.stream_id]
                    self.snapshots.forget(message.stream_id)
                    log.info("%s: removed", message.stream_id)
            elif isinstance(message, IngestExited):
                self._ingest_exited.add(message.process)
                for sid, snap in message.streams.items():
                    entry = self._streams.get(sid)
                    if entry is not None and entry.ingest == message.process:
                        entry.ingest_stats = snap
                        if snap.state in ("ended", "failed"):
                            entry.state = snap.state
            elif isinstance(message, InferenceExited):
                self._inference_exit = message
                self._handle(message.stats)
            elif isinstance(message, Snapshot):
                if message.stream_id in self._streams:
                    self.snapshots.add(message)
            elif isinstance(message, InferenceReady):
                self._ready = message
                if self._inference_incarnation:
                    log.info("inference ready again (pid %d)", message.pid)
            elif isinstance(message, InferenceFatal):
                self._fatal = message.message
            else:
                log.warning("unexpected status message %r ignored", type(message).__name__)

    # ================================================================================ streams ============
    def _add(self, plan: StreamPlan) -> _Entry:
        """Assign to the least loaded ingest process; tell inference first (its plan decides live or file)."""
        loads = [0] * len(self._ingest)
        for entry in self._streams.values():
            loads[entry.ingest] += 1
        # Not to a process that died and waits for its restart (the restart re-adds only its live streams).
        candidates = [i for i, child in enumerate(self._ingest) if child.restart_at is None] or list(range(len(loads)))
        index = min(candidates, key=lambda i: loads[i])
        entry = self._streams[plan.id] = _Entry(plan=plan, ingest=index, first_index=self._first_index(plan))
        self._inference_control(StreamAdded(plan))
        self._ingest[index].control.put(AddStream(plan, entry.first_index))
        log.info("%s: added to ingest-%d (%s, %s)", plan.id, index, plan.kind, plan.display_url)
        return entry

    def _first_index(self, plan: StreamPlan) -> int:
        """Where a live stream's frame indices go on: past every frame an earlier instance decoded or that
        inference took (the latter covers frames decoded after the last counters a dead process sent)."""
        if plan.kind != "live":
            return 0
        last_taken = -1
        stats = self._inference_stats
        merged = _merge_stream(self._stream_past.get(plan.id), stats.streams.get(plan.id) if stats else None)
        if merged is not None:
            last_taken = merged.last_index
        return max(self._next_index.get(plan.id, 0), last_taken + 1)

    def _fold(self, entry: _Entry, snap: StreamCountersSnapshot | None) -> None:
        """An ingest instance of this stream ended: keep its counters in the stream's lifetime totals."""
        if snap is None:
            return
        self._past.setdefault(entry.plan.id, Counter()).update(_snapshot_counts(snap))
        if entry.plan.kind == "live":
            sid = entry.plan.id
            self._next_index[sid] = max(self._next_index.get(sid, 0), entry.first_index + snap.decoded)
        entry.ingest_stats = None

    # -- the HTTP API's view (thread-safe) ----------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """The service's health; ``status`` is \"ok\" only while serving."""
        with self._lock:
            body = {
                "status": "ok" if self._phase == "serving" else self._phase,
                "run_id": self.run_id,
                "streams": len(self._streams),
                "states": _count(entry.state for entry in self._streams.values()),
                "workers": {
                    "inference": _pid(self._inference),
                    "ingest": [_pid(child) for child in self._ingest],
                },
                "failure": self._failure,
                "gallery": self._gallery_health(),
            }
            return body

    def _gallery_health(self) -> dict[str, Any] | None:
        stats = self._stats_now()
        if stats is None or not self.cfg.IndexProcess.index_dir:
            return None
        return {"version": stats.gallery_version, "entries": stats.gallery_entries,
                "load_errors": stats.gallery_load_errors, "error": stats.gallery_error}

    def list_streams(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._view(entry) for entry in self._streams.values()]

    def sinks(self) -> list[dict[str, Any]]:
        with self._lock:
            stats = self._stats_now()
            return list(stats.sinks) if stats is not None else []

    def get_stream(self, stream_id: str) -> dict[str, Any]:
        with self._lock:
            entry = self._streams.get(stream_id)
            if entry is None:
                raise NotFound(f"no stream {stream_id!r}")
            return self._view(entry)

    def add_stream(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            spec = StreamSpec.model_validate(body)
            plan = plan_from_spec(spec)
        except ValidationError as exc:
            raise Invalid(spec_error(exc)) from None
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        with self._lock:
            if self._phase != "serving":
                raise Unavailable(f"service is {self._phase}: streams cannot be added now")
            existing = self._streams.get(plan.id)
            if existing is not None:
                what = "being removed" if existing.removing else "already present"
                raise Conflict(f"stream {plan.id!r} is {what}")
            if len(self._streams) >= self.service.max_streams:
                raise Conflict(f"Service.max_streams={self.service.max_streams} streams already")
            return self._view(self._add(plan))

    def remove_stream(self, stream_id: str) -> dict[str, Any]:
        with self._lock:
            entry = self._streams.get(stream_id)
            if entry is None:
                raise NotFound(f"no stream {stream_id!r}")
            if self._phase != "serving":
                raise Unavailable(f"service is {self._phase}: streams cannot be removed now")
            if not entry.removing:
                entry.removing = True
                child = self._ingest[entry.ingest]
                if child.process.is_alive():
                    child.control.put(RemoveStream(stream_id))
                else:
                    del self._streams[stream_id]
                log.info("%s: removing", stream_id)
            return {"id": stream_id, "removing": True}

    # -- metrics, recognitions and overlay snapshots (thread-safe) ---------------------------------------------
    def metrics(self) -> bytes:
        return m.render(self._collector)

    def metrics_snapshot(self) -> m.ServiceMetrics:
        from workers import __version__

        with self._lock:
            stats = self._stats_now()
            streams = [self._stream_metrics(entry) for entry in self._streams.values()]
            sinks = []
            for s in (stats.sinks if stats is not None else []):
                sinks.append(m.SinkMetrics(s["name"], s["written"], s["errors"], s["dropped"],
                                           s.get("spool") or {"memory": s["queued"]}))
            known = {s.name for s in sinks}
            sinks += [m.SinkMetrics(name, 0, 0, 0, {"memory": 0}) for name in self._sink_names if name not in known]
            processes: dict[str, int | None] = {"supervisor": os.getpid(), "inference": _pid(self._inference)}
            for child in self._ingest:
                processes[child.name] = _pid(child)
            return m.ServiceMetrics(
                version=__version__, run_id=self.run_id, streams=streams, sinks=sinks,
                batches=stats.batches if stats else 0,
                batch_size=stats.batch_size if stats else None,
                batch_wait=stats.batch_wait_seconds if stats else None,
                inference=dict(stats.inference_seconds) if stats else {},
                gallery_entries=stats.gallery_entries if stats else 0,
                gallery_version=stats.gallery_version if stats else None,
                gallery_load_errors=stats.gallery_load_errors if stats else 0,
                processes=processes, restarts=dict(self._restart_totals),
            )

    def _stream_metrics(self, entry: _Entry) -> m.StreamMetrics:
        totals = Counter(self._past.get(entry.plan.id, {}))
        ing = entry.ingest_stats
        if ing is not None:
            totals.update(_snapshot_counts(ing))
        inf = self._stream_inference(entry)
        dropped = {
            "every_nth": totals["skipped"], "source": totals["dropped_source"],
            "backlog": inf.dropped_backlog if inf else 0, "too_old": inf.dropped_too_old if inf else 0,
            "inference_error": inf.errors if inf else 0,
        }
        for reason in ("overwritten", "ring_in_use", "closed"):
            dropped[reason] = totals[f"ring:{reason}"]
        return m.StreamMetrics(
            stream=entry.plan.id, state=entry.state,
            last_frame_age_s=None if ing is None else ing.last_frame_age_s,
            decoded=totals["decoded"], processed=inf.processed if inf else 0, dropped=dropped,
            reconnects=totals["reconnects"], decode_errors=totals["decode_errors"],
            detected=inf.detected if inf else 0, recognized=inf.recognized if inf else 0,
            e2e=inf.e2e_seconds if inf else None,
        )

    def recognitions(self) -> dict[str, Any]:
        """Named objects per gallery label in the published results (top labels; docs/metrics.md)."""
        with self._lock:
            stats = self._stats_now()
            labels = dict(stats.labels) if stats is not None else {}
        rows = [{"label": label, "count": sum(streams.values()), "streams": dict(sorted(streams.items()))}
                for label, streams in labels.items()]
        rows.sort(key=lambda row: (-row["count"], row["label"]))
        return {"labels": rows, "total": sum(row["count"] for row in rows)}

    def snapshot(self, stream_id: str, index: int | None = None) -> Snapshot:
        """The newest overlay snapshot of a stream (or of frame ``index``); asks inference for more."""
        with self._lock:
            if stream_id not in self._streams:
                raise NotFound(f"no stream {stream_id!r}")
            until = self.snapshots.watch_due(stream_id)
            if until is not None:
                self._inference_control(Watch(stream_id, until))
        snap = self.snapshots.get(stream_id, index)
        if snap is None:
            what = "no snapshot yet" if index is None else f"no snapshot of frame {index} (kept: the newest {self.snapshots.keep})"
            raise NotFound(f"stream {stream_id!r}: {what}")
        return snap

    def _stats_now(self) -> InferenceStats | None:
        """The inference counters of this run: the current worker's plus those of the ones before it."""
        return _merge_stats(self._inference_past, self._inference_stats)

    def _stream_inference(self, entry: _Entry) -> StreamInference | None:
        return _merge_stream(self._stream_past.get(entry.plan.id), entry.inference)

    def _view(self, entry: _Entry) -> dict[str, Any]:
        plan = entry.plan
        ing = entry.ingest_stats
        inf = self._stream_inference(entry)
        totals = Counter(self._past.get(plan.id, {}))
        if ing is not None:
            totals.update(_snapshot_counts(ing))
        counters: dict[str, Any] = {name: totals[name] for name in _INGEST_COUNTERS + ("written", "taken")}
        counters["dropped_ring"] = {key.split(":", 1)[1]: n for key, n in sorted(totals.items()) if key.startswith("ring:")}
        counters.update(
            dropped_backlog=inf.dropped_backlog if inf else 0,
            dropped_too_old=inf.dropped_too_old if inf else 0,
            inference_errors=inf.errors if inf else 0,
            processed=inf.processed if inf else 0,
        )
        sinks = {name: {"written": 0, "dropped": 0, "errors": 0} for name in self._sink_names}
        stats_now = self._stats_now()
        if stats_now is not None:
            for name, per_stream in stats_now.sink_streams.items():
                sinks[name] = dict(per_stream.get(plan.id, {"written": 0, "dropped": 0, "errors": 0}))
        counters["published"] = {name: s["written"] for name, s in sinks.items()}
        # Results lost on the way out are the stream's business too (a full spool while a broker was down).
        warnings = [f"{name}: {s['dropped']} result(s) dropped" for name, s in sinks.items() if s["dropped"]]
        warnings += [f"{name}: {s['errors']} failed write(s)" for name, s in sinks.items() if s["errors"]]
        view: dict[str, Any] = {
            "id": plan.id,
            "url": plan.display_url,
            "kind": plan.kind,
            "every_nth": plan.every_nth,
            "state": entry.state,
            "reason": entry.reason,
            "since": round(entry.since, 3),
            "removing": entry.removing,
            "ingest_process": entry.ingest,
            "last_frame_age_s": None if ing is None or ing.last_frame_age_s is None else round(ing.last_frame_age_s, 3),
            "frame_count": ing.frame_count if ing else None,
            "counters": counters,
            "sinks": sinks,
            "latency_ms": dict(inf.latency_ms) if inf else {},
            "warnings": warnings,
            "last_latency_ms": dict(inf.last) if inf else {},
        }
        return view

    def _snapshot_all(self) -> dict[str, Any]:
        with self._lock:
            stats = self._stats_now()
            return {
                "run_id": self.run_id,
                "streams": [self._view(entry) for entry in self._streams.values()],
                "sinks": stats.sinks if stats is not None else [],
                "batches": stats.batches if stats is not None else 0,
                "frames": stats.frames if stats is not None else 0,
                "gallery_version": stats.gallery_version if stats is not None else None,
            }


def _pid(child: _Child | None) -> int | None:
    return child.process.pid if child is not None and child.process.is_alive() else None


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


# ------------------------------------------------------------------ counters across inference restarts ------
_STREAM_SUMS = ("taken", "processed", "dropped_backlog", "dropped_too_old", "errors", "detected", "recognized")


def _merge_hist(a: m.Histogram | None, b: m.Histogram | None) -> m.Histogram | None:
    if a is None or b is None or a.bounds != b.bounds:
        return b if b is not None else a
    return m.Histogram(a.bounds, [x + y for x, y in zip(a.counts, b.counts)], a.total + b.total)


def _merge_stream(past: StreamInference | None, now: StreamInference | None) -> StreamInference | None:
    """A stream's inference counters: an earlier worker's (``past``) plus the current one's."""
    if past is None or now is None:
        return now if now is not None else past
    sums = {name: getattr(past, name) + getattr(now, name) for name in _STREAM_SUMS}
    return replace(now, **sums, last_index=max(past.last_index, now.last_index),
                   e2e_seconds=_merge_hist(past.e2e_seconds, now.e2e_seconds))


def _merge_counts(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out = {key: dict(inner) for key, inner in a.items()}
    for key, inner in b.items():
        target = out.setdefault(key, {})
        for name, n in inner.items():
            target[name] = target.get(name, 0) + n
    return out


def _merge_sinks(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged = {s["name"]: dict(s, queued=0) for s in a}
    for s in b:
        old = merged.get(s["name"])
        merged[s["name"]] = dict(s) if old is None else dict(
            s, **{k: old[k] + s[k] for k in ("written", "dropped", "errors")},
            last_error=s.get("last_error") or old.get("last_error"))
    return list(merged.values())


def _merge_stats(past: InferenceStats | None, now: InferenceStats | None) -> InferenceStats | None:
    """Run totals: an earlier worker's counters (``past``, streams left out: see ``_stream_past``) plus the
    current worker's; gauges (gallery, queue depths, latency windows) are the current worker's."""
    if past is None or now is None:
        return now if now is not None else past
    sink_streams = {name: _merge_counts(past.sink_streams.get(name, {}), now.sink_streams.get(name, {}))
                    for name in set(past.sink_streams) | set(now.sink_streams)}
    return replace(
        now,
        sinks=_merge_sinks(past.sinks, now.sinks),
        sink_streams=sink_streams,
        batches=past.batches + now.batches,
        frames=past.frames + now.frames,
        batch_size=_merge_hist(past.batch_size, now.batch_size),
        batch_wait_seconds=_merge_hist(past.batch_wait_seconds, now.batch_wait_seconds),
        inference_seconds={model: _merge_hist(past.inference_seconds.get(model), now.inference_seconds.get(model))
                           for model in set(past.inference_seconds) | set(now.inference_seconds)},
        labels=_merge_counts(past.labels, now.labels),
        gallery_load_errors=past.gallery_load_errors + now.gallery_load_errors,
    )


def _free_queue_reader(frames_queue: Any) -> None:
    """The frame queue's reader lock, if the dead inference worker held it (it waits inside ``get`` almost all
    the time): released, so the next worker can read. A ``multiprocessing.Lock`` is a semaphore, which any
    process may release; only one reader exists, so a taken lock now can only be the dead one's."""
    lock = getattr(frames_queue, "_rlock", None)
    if lock is None:
        return
    if lock.acquire(False):
        lock.release()
    else:
        lock.release()
        log.warning("frame queue: the reader lock the dead inference worker held was released")
