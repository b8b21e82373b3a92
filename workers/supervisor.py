"""The supervisor of `vidrec serve`: starts, watches, restarts and stops the worker processes.

Process layout (multiprocessing 'spawn', one process tree, so one resource tracker for every shared-memory
segment, as stream/transport.py requires):

    supervisor (this process: the stream registry, the HTTP API thread, signals)
      ├─ inference      one: FrameConsumer → Batcher → ShituSystem → AsyncSinks (workers/inference.py)
      └─ ingest-0..N-1  Service.ingest_processes: a thread per stream → FrameProducer (workers/ingest.py)

Channels: one frame queue (refs to shared-memory slots; every producer → the consumer); per worker, a control
queue (supervisor → worker) and its own report pipe (worker → supervisor: states, counters, confirmations;
workers/status_channel.py). The messages are in workers/messages.py. The supervisor owns the run id, so it can
remove a dead producer's segments (``unlink_stream_segments``) and sweep the run's segments at exit
(``unlink_run_segments``).

Its parts, one job each:

- workers/registry.py: which streams run here and on which ingest process (``place``: the fewest streams).
- workers/run_totals.py: the workers' counters merged across their restarts (never going back).
- workers/children.py: starting a worker, and one restart policy for both kinds.
- workers/views.py: what ``GET /streams``, ``/healthz``, ``/metrics`` and ``/recognitions`` show.
- here: the wiring. Adding a stream tells inference its plan (live or file) first, then the ingest process;
  removing one stops its thread, whose producer ends the stream with an ``EndOfStream`` after inference took
  what was written. State changes reported by ingest are forwarded to inference, so results carry
  ``stream_state``. Reports are handled by a table from message type to handler (``_handlers``).

Cluster mode (`--cluster NAME`, docs/cluster.md): the streams come from the cluster's streams topic, not from
the config: ``--stream``, the config's streams and ``POST``/``DELETE /streams`` write the topic
(workers/cluster_specs.py), and a ``ClusterMember`` thread (workers/cluster_member.py) starts and stops here the
streams of the partitions the consumer group gives this node (``cluster_start``/``cluster_stop``); both belong to
the node's ``ClusterNode`` (workers/cluster_node.py), which also answers ``GET /cluster``. On SIGTERM
the node leaves the group first (its streams drain through the revocation), so the others take them at once.

Failures: a worker that dies is started again after a backoff (1 s doubling to 30 s; workers/children.py).
A dead ingest process's live streams are added again; its unfinished file streams are marked ``failed`` (not
replayed: that would publish duplicates). A dead inference worker's reader lock on the frame queue and the frame
slots it held are freed (``free_dead_reader``, ``free_dead_consumer_slots``), and every stream still running is
announced to the next one; the results it had not handed to the sinks are lost (each stream's ``seq`` shows the
gap). An inference worker that dies again and again within a minute of its start (6 times in a row), or cannot
start again, stops the service with exit code 1.

Stopping (SIGTERM or SIGINT; a second one stops without draining): the API refuses changes; every ingest
process closes its sources and ends its producers, which wait (up to ``Service.drain_timeout_s``) for inference
to take the frames already written; once they have exited (so every ref is on the queue), inference gets
``Drain``: it processes what is left, hands every result to the sinks, closes them (each flushes, up to
``Service.sink_close_timeout_s``) and reports its final counters. The supervisor logs them as one JSON line
(``final: {...}``), sweeps the run's shared memory and returns 0 (1 when a sink could not deliver everything
or a worker failed).
"""
from __future__ import annotations

import enum
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import Counter
from multiprocessing.connection import Connection, wait as wait_for_connections
from typing import Any, Callable

from pydantic import ValidationError

from config import VidrecConfig
from config.schema import StreamSpec
from stream.errors import SinkError
from stream.states import StreamState
from stream.transport import (
    free_dead_consumer_slots,
    free_dead_reader,
    make_frame_queue,
    new_run_id,
    unlink_run_segments,
    unlink_stream_segments,
)
from workers import metrics as m
from workers import views
from workers.children import INFERENCE_RESTARTS, INGEST_RESTARTS, Child, GiveUp, spawn
from workers.http_api import ApiServer
from workers.inference import inference_main
from workers.ingest import ingest_main
from workers.messages import (
    AddStream,
    Drain,
    InferenceExited,
    InferenceFatal,
    InferenceReady,
    InferenceSettings,
    InferenceStats,
    IngestExited,
    IngestSettings,
    IngestStats,
    RemoveStream,
    SetStreamState,
    StopIngest,
    StreamAdded,
    StreamFinished,
    StreamRemoved,
    StreamStateChanged,
    Watch,
)
from workers.plans import StreamPlan, plan_from_spec, spec_error
from workers.registry import StreamEntry, StreamRegistry
from workers.run_totals import RunTotals
from workers.service_errors import Conflict, Invalid, NotFound, ServiceError, Unavailable
from workers.snapshots import Snapshot, SnapshotStore
from workers.track_feed import TrackEvents, TrackEventStore
from workers.outputs import event_sink_names

log = logging.getLogger("vidrec")

__all__ = ["ServiceError", "Supervisor"]


class Phase(enum.StrEnum):
    """Where the service is in its life (``/healthz`` says ``ok`` while serving, else this)."""

    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class Supervisor:
    def __init__(
        self,
        cfg: VidrecConfig,
        plans: list[StreamPlan],
        *,
        http: tuple[str, int] | None = None,
        api_token: str | None = None,
        log_level: int = logging.INFO,
        models: dict[str, dict[str, str]] | None = None,
        specs: list[StreamSpec] | None = None,
    ) -> None:
        self.cfg = cfg
        self._models = models  # per model: precision, file, reason (workers/serve_cmd.py model_precisions)
        self.service = cfg.Service
        self._initial = plans
        self._specs = specs or []  # cluster mode: the streams to write to the streams topic at start
        self._cluster: Any = None  # workers/cluster_node.py ClusterNode, in cluster mode
        self._cluster_started: dict[str, StreamSpec] = {}  # the spec of each stream the cluster started here
        self._cluster_refused: set[tuple[str, str]] = set()  # (id, reason) logged once
        self._http_addr = http
        self._api_token = api_token
        self._log_level = log_level
        self._ctx = mp.get_context("spawn")
        self.run_id = new_run_id()
        self._lock = threading.RLock()  # the registry, the totals and the phase, shared with the API's threads
        self._streams = StreamRegistry(self.service.ingest_processes, self.service.max_streams)
        self._totals = RunTotals()
        self._stop = threading.Event()
        self._abort = False
        self._phase = Phase.STARTING
        self._exit_code = 0
        self._failure: str | None = None
        self._inference: Child | None = None
        self._ingest: list[Child] = []
        self._readers: dict[Connection, str] = {}  # each worker's report pipe -> its name
        self._inference_incarnation = 0
        self._inference_exit: InferenceExited | None = None
        self._ready: InferenceReady | None = None
        self._fatal: str | None = None
        self._api: ApiServer | None = None
        self._sink_names = [name for name, on in (("kafka", cfg.Kafka.bootstrap), ("redis", cfg.Redis.url)) if on]
        self._sink_names += event_sink_names(cfg)
        self._ingest_settings = IngestSettings.from_config(cfg, self.run_id)
        self.snapshots = SnapshotStore()
        self.track_feed = TrackEventStore()
        self._restart_totals: Counter = Counter()
        self._collector = m.ServiceCollector(self.metrics_snapshot)
        self._handlers: dict[type, Callable[[Any], None]] = {
            StreamStateChanged: self._on_state_changed,
            IngestStats: self._on_ingest_stats,
            StreamRemoved: self._on_stream_removed,
            IngestExited: self._on_ingest_exited,
            InferenceReady: self._on_inference_ready,
            InferenceFatal: self._on_inference_fatal,
            InferenceStats: self._on_inference_stats,
            StreamFinished: self._on_stream_finished,
            InferenceExited: self._on_inference_exited,
            Snapshot: self._on_snapshot,
            TrackEvents: self.track_feed.add,
        }

    # ================================================================================ lifecycle ==========
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code. Raises ServiceError when it cannot start."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        self._frames = make_frame_queue(self._ctx, streams=self.service.max_streams, slots=self.service.slots_per_stream)
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
                for plan in ([] if self.clustered else self._initial):
                    self._add(plan)
                self._phase = Phase.SERVING
            if self.clustered:
                self._join_cluster()
            else:
                log.info("serving %d stream(s) with %d ingest process(es) (run %s)",
                         len(self._initial), len(self._ingest), self.run_id)
            while not self._stop.is_set():
                self._pump(0.1)
                self._watch_children()
                self._watch_cluster()
            return self._finish()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._cleanup()

    @property
    def clustered(self) -> bool:
        return self.cfg.Cluster.name is not None

    def _join_cluster(self) -> None:
        """Join the cluster (workers/cluster_node.py) with the streams given at start."""
        from workers.cluster_node import ClusterNode

        node = ClusterNode(self.cfg, self, run_id=self.run_id)
        node.join(self._specs, http="%s:%d" % self._api.address if self._api is not None else None)
        with self._lock:
            self._cluster = node
        log.info("cluster %s: node %s serving with %d ingest process(es) (run %s)",
                 self.cfg.Cluster.name, self.cfg.Cluster.node, len(self._ingest), self.run_id)

    def _watch_cluster(self) -> None:
        """A node whose control thread failed runs nothing more (it stopped its streams): it stops, exit code 1,
        for its supervisor (systemd, compose, Kubernetes) to start it again."""
        failure = self._cluster.failure if self._cluster is not None else None
        if failure is not None and not self._stop.is_set():
            self._set_failure(f"cluster {self.cfg.Cluster.name!r}: {failure}: stopping")
            self._stop.set()

    def _leave_cluster(self) -> None:
        """Leave the group (every stream here drains through the revocation) while the reports are pumped."""
        if self._cluster is not None:
            self._cluster.leave(self._wait, lambda: self._abort)

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

    def _spawn(self, name: str, target: Callable[..., None], args: tuple[Any, ...], restarts: int) -> Child:
        child = spawn(self._ctx, name, target, args, self._log_level, restarts=restarts)
        self._readers[child.reader] = name
        return child

    def _spawn_inference(self, restarts: int = 0) -> Child:
        settings = InferenceSettings.from_config(self.cfg, self.run_id, incarnation=self._inference_incarnation)
        return self._spawn("inference", inference_main, (settings, self.cfg, self._frames), restarts)

    def _spawn_ingest(self, index: int, restarts: int = 0) -> Child:
        return self._spawn(f"ingest-{index}", ingest_main, (index, self._ingest_settings, self._frames), restarts)

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

    def _finish(self) -> int:
        """Drain and stop every child; log the final counters; returns the exit code."""
        with self._lock:
            self._phase = Phase.DRAINING
        if not self._abort:
            self._leave_cluster()
        abort = self._abort
        started = time.monotonic()
        for child in self._ingest:
            if child.alive:
                child.control.put(StopIngest(abort=abort))
        ingest_deadline = started + (2.0 if abort else self.service.drain_timeout_s + 10.0)
        interrupted = lambda: self._abort and not abort  # noqa: E731 - a second signal came while draining
        self._wait(lambda: all(not c.alive for c in self._ingest) or interrupted(), ingest_deadline)
        for child in self._ingest:
            if child.alive:
                log.warning("%s did not stop in time: killed", child.name)
                child.process.kill()
            child.process.join(2.0)
        inference = self._inference
        if inference is not None and self._ready is None and inference.alive:
            inference.process.kill()  # stopped while the models were loading: nothing to drain
            inference.process.join(5.0)
        if inference is not None and inference.alive:
            inference.control.put(Drain())
            sinks = len(self._sink_names)
            deadline = time.monotonic() + (3.0 if abort else 30.0 + sinks * self.service.sink_close_timeout_s)
            self._wait(lambda: self._inference_exit is not None or not inference.alive or interrupted(), deadline)
            inference.process.join(0.5 if self._abort else 5.0)
            if inference.alive:
                log.warning("inference did not stop in time: killed")
                inference.process.kill()
                inference.process.join(2.0)
        self._pump(0.0)
        with self._lock:
            final = views.final_counters(self.run_id, self.list_streams(), self._totals.service())
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
            self._phase = Phase.STOPPED
        log.info("stopped after %.1fs of draining", time.monotonic() - started)
        return self._exit_code

    def _cleanup(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None
        for child in ([self._inference] if self._inference else []) + self._ingest:
            if child.alive:
                child.process.kill()
                child.process.join(2.0)
        removed = unlink_run_segments(self.run_id)
        if removed:
            log.info("removed %d shared-memory segment(s) left by the workers", len(removed))
        if self.cfg.Kafka.bootstrap and self.cfg.Kafka.spool_max_bytes > 0:
            from stream.sinks.spool import SPOOLED_SINKS, discard_spool_dir, spool_dirs_of_run
            from workers.outputs import spool_base

            for sink in SPOOLED_SINKS:
                for folder in spool_dirs_of_run(spool_base(self.cfg.Kafka), self.run_id, sink):  # a killed worker's
                    lost = discard_spool_dir(folder)
                    if lost:
                        log.error("%s: %d spooled message(s) never published (lost)", folder, lost)

    def _set_failure(self, message: str) -> None:
        if self._failure is None:
            self._failure = message
            log.error("%s", message)
        self._exit_code = 1

    def _wait(self, condition: Callable[[], bool], deadline: float) -> bool:
        """Pump the report pipes (children block on a full pipe otherwise) until ``condition`` or ``deadline``."""
        while not condition():
            if time.monotonic() >= deadline:
                return False
            self._pump(0.05)
        return True

    # ================================================================================ children ===========
    def _watch_children(self) -> None:
        inference = self._inference
        if inference is not None and not inference.alive:
            self._watch_inference(inference)
            if self._stop.is_set():
                return
        for index, child in enumerate(self._ingest):
            if not child.alive:
                self._watch_ingest(index, child)

    def _watch_ingest(self, index: int, child: Child) -> None:
        """An ingest process is not running: schedule its restart, or start it when due (with its live streams)."""
        now = time.monotonic()
        if child.restart_at is None:
            decision = INGEST_RESTARTS.after_death(child.restarts, child.uptime_s(now))
            assert not isinstance(decision, GiveUp), "ingest processes are always started again"
            child.restarts, child.restart_at = decision.streak, now + decision.delay_s
            log.error("%s (pid %s) died with exit code %s: restarting it in %.0fs",
                      child.name, child.process.pid, child.process.exitcode, decision.delay_s)
            self._orphan_streams(index, child)
        elif now >= child.restart_at:
            with self._lock:
                self._ingest[index] = fresh = self._spawn_ingest(index, restarts=child.restarts + 1)
                self._restart_totals[child.name] += 1
                for entry in self._streams.on_process(index):
                    if entry.plan.live:
                        entry.first_index = self._totals.first_index(entry.id)
                        self._inference_control(StreamAdded(entry.plan))
                        fresh.control.put(AddStream(entry.plan, entry.first_index))

    def _watch_inference(self, child: Child) -> None:
        """The inference worker is not running: schedule its restart, start it when due, or give up."""
        now = time.monotonic()
        if child.restart_at is None:
            code = child.process.exitcode
            self._drain_reports(child)  # what it reported before it died counts
            decision = INFERENCE_RESTARTS.after_death(child.restarts, child.uptime_s(now))
            if self._fatal is not None:  # a restarted worker could not load its models or reach its sinks
                self._set_failure(f"inference worker could not start again: {self._fatal}: stopping")
            elif isinstance(decision, GiveUp):
                self._set_failure(f"inference worker died (exit code {code}) {decision.deaths} times in a row: stopping")
            if self._failure is not None or self._phase is not Phase.SERVING:
                if self._failure is None:
                    self._set_failure(f"inference worker died (exit code {code}) while {self._phase}: stopping")
                self._abort = True
                self._stop.set()
                return
            assert not isinstance(decision, GiveUp)
            child.restarts, child.restart_at = decision.streak, now + decision.delay_s
            log.error("inference worker (pid %s) died with exit code %s: restarting it in %.0fs; the results it had "
                      "not handed to the sinks are lost (each stream's seq shows the gap)", child.process.pid, code,
                      decision.delay_s)
            with self._lock:
                self._totals.inference_died()
                self._inference_exit = None
                self._ready = None
                stream_ids = [entry.id for entry in self._streams]
            if free_dead_reader(self._frames):
                log.warning("frame queue: the reader lock the dead inference worker held was released")
            for stream_id in stream_ids:  # a file stream whose slots it held all would wait forever
                if freed := free_dead_consumer_slots(self.run_id, stream_id):
                    log.warning("stream %r: %d frame slot(s) the dead inference worker held were freed", stream_id,
                                freed)
            return
        if now < child.restart_at:
            return
        with self._lock:
            self._inference_incarnation += 1
            self._restart_totals["inference"] += 1
            fresh = self._spawn_inference(restarts=child.restarts + 1)
            self._inference = fresh
            for entry in self._streams:
                if entry.removing or entry.state.final:
                    continue
                fresh.control.put(StreamAdded(entry.plan))
                fresh.control.put(SetStreamState(entry.id, entry.state))
        log.info("inference worker started again (pid %d, run id %s.%d)", fresh.process.pid, self.run_id,
                 self._inference_incarnation)

    def _orphan_streams(self, index: int, child: Child) -> None:
        """The streams of a dead ingest process: segments removed; live ones wait for the restart."""
        reason = f"{child.name} died (exit code {child.process.exitcode})"
        with self._lock:
            for entry in self._streams.on_process(index):
                unlink_stream_segments(self.run_id, entry.id)
                self._totals.ingest_ended(entry.id, entry.first_index, live=entry.plan.live)
                if entry.removing:
                    self._streams.drop(entry.id)
                elif not entry.plan.live and not entry.state.final:
                    self._set_state(entry, StreamState.FAILED, f"{reason}; file streams are not replayed")
                elif entry.plan.live:
                    self._set_state(entry, StreamState.RECONNECTING, f"{reason}; restarting")

    def _inference_control(self, message: Any) -> None:
        if self._inference is not None and self._inference.alive:
            self._inference.control.put(message)

    def _set_state(self, entry: StreamEntry, state: StreamState, reason: str | None, at: float | None = None) -> None:
        entry.set_state(state, reason, at)
        self._inference_control(SetStreamState(entry.id, entry.state))

    # ================================================================================ reports ============
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

    def _drain_reports(self, child: Child) -> None:
        """Everything a dead worker managed to report, up to the end of its pipe."""
        conn = child.reader
        while conn is not None and conn in self._readers:
            if not conn.poll(1.0):
                break
            if not self._receive_from(conn):
                break

    def _handle(self, message: Any) -> None:
        handler = self._handlers.get(type(message))
        if handler is None:
            log.warning("unexpected report %r ignored", type(message).__name__)
            return
        with self._lock:
            handler(message)

    def _on_state_changed(self, message: StreamStateChanged) -> None:
        entry = self._streams.get(message.stream_id)
        if entry is not None:
            self._set_state(entry, message.state, message.reason, at=message.at)

    def _on_ingest_stats(self, message: IngestStats) -> None:
        for sid, snap in message.streams.items():
            entry = self._streams.get(sid)
            if entry is not None and entry.ingest == message.process:
                self._totals.ingest_report(sid, snap)

    def _on_stream_removed(self, message: StreamRemoved) -> None:
        entry = self._streams.get(message.stream_id)
        if entry is not None and entry.removing:
            self._totals.ingest_ended(entry.id, entry.first_index, live=entry.plan.live, final=message.final)
            self._streams.drop(entry.id)
            self._cluster_started.pop(entry.id, None)
            self.snapshots.forget(entry.id)
            log.info("%s: removed", entry.id)

    def _on_ingest_exited(self, message: IngestExited) -> None:
        for sid, snap in message.streams.items():
            entry = self._streams.get(sid)
            if entry is not None and entry.ingest == message.process:
                self._totals.ingest_report(sid, snap)
                if snap.state.final:
                    entry.state = snap.state

    def _on_inference_ready(self, message: InferenceReady) -> None:
        self._ready = message
        if self._inference_incarnation:
            log.info("inference ready again (pid %d)", message.pid)

    def _on_inference_fatal(self, message: InferenceFatal) -> None:
        self._fatal = message.message

    def _on_inference_stats(self, message: InferenceStats) -> None:
        self._totals.inference_report(message)

    def _on_stream_finished(self, message: StreamFinished) -> None:
        self._totals.stream_finished(message.stream_id, message.counters)

    def _on_inference_exited(self, message: InferenceExited) -> None:
        self._inference_exit = message
        self._totals.inference_report(message.stats)

    def _on_snapshot(self, message: Snapshot) -> None:
        if message.stream_id in self._streams:
            self.snapshots.add(message)

    # ================================================================================ streams ============
    def _add(self, plan: StreamPlan) -> StreamEntry:
        """Register on the least loaded ingest process; tell inference first (its plan decides live or file)."""
        first_index = self._totals.first_index(plan.id) if plan.live else 0
        entry = self._streams.add(plan, running=[child.restart_at is None for child in self._ingest],
                                  first_index=first_index)
        self._inference_control(StreamAdded(plan))
        self._ingest[entry.ingest].control.put(AddStream(plan, entry.first_index))
        log.info("%s: added to ingest-%d (%s, %s)", plan.id, entry.ingest, plan.kind, plan.display_url)
        return entry

    # -- the HTTP API's view (thread-safe; the StreamService protocol of workers/http_api.py) ------------------
    def health(self) -> dict[str, Any]:
        """The service's health; ``status`` is \"ok\" only while serving."""
        with self._lock:
            stats = self._totals.service()
            return {
                "status": "ok" if self._phase is Phase.SERVING else self._phase.value,
                "run_id": self.run_id,
                "streams": len(self._streams),
                "states": self._streams.state_counts(),
                "workers": {
                    "inference": self._inference.pid if self._inference else None,
                    "ingest": [child.pid for child in self._ingest],
                },
                "failure": self._failure,
                "gallery": views.gallery_health(stats) if self.cfg.IndexProcess.index_dir else None,
                "models": self._models,
            }

    def list_streams(self) -> list[dict[str, Any]]:
        with self._lock:
            return [views.stream_view(entry, self._totals, self._sink_names) for entry in self._streams]

    def sinks(self) -> list[dict[str, Any]]:
        with self._lock:
            stats = self._totals.service()
            return list(stats.sinks) if stats is not None else []

    def get_stream(self, stream_id: str) -> dict[str, Any]:
        with self._lock:
            return views.stream_view(self._entry(stream_id), self._totals, self._sink_names)

    def _entry(self, stream_id: str) -> StreamEntry:
        entry = self._streams.get(stream_id)
        if entry is None:
            raise NotFound(f"no stream {stream_id!r}")
        return entry

    def add_stream(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            spec = StreamSpec.model_validate(body)
            plan = plan_from_spec(spec)
        except ValidationError as exc:
            raise Invalid(spec_error(exc)) from None
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        if self.clustered:
            return self._cluster_add(spec)
        with self._lock:
            if self._phase is not Phase.SERVING:
                raise Unavailable(f"service is {self._phase}: streams cannot be added now")
            self._streams.check_room(plan.id)
            return views.stream_view(self._add(plan), self._totals, self._sink_names)

    def remove_stream(self, stream_id: str) -> dict[str, Any]:
        if self.clustered:
            return self._cluster_remove(stream_id)
        with self._lock:
            entry = self._entry(stream_id)
            if self._phase is not Phase.SERVING:
                raise Unavailable(f"service is {self._phase}: streams cannot be removed now")
            if not entry.removing:
                self._stop_stream(entry, "removing")
            return {"id": stream_id, "removing": True}

    def _stop_stream(self, entry: StreamEntry, why: str) -> None:
        """Ask the stream's ingest process to stop it (drained, then ``StreamRemoved``); if that process is down,
        drop it at once. Under the lock."""
        entry.removing = True
        child = self._ingest[entry.ingest]
        if child.alive:
            child.control.put(RemoveStream(entry.id))
        else:
            self._streams.drop(entry.id)
        log.info("%s: %s", entry.id, why)

    # -- the cluster (thread-safe; never calls the node while holding the lock: its member calls us under its own) ---
    def _node(self, *, changing: bool) -> Any:
        """The joined ClusterNode, or the error that says why there is none (yet)."""
        with self._lock:
            node, phase = self._cluster, self._phase
        if node is not None and (phase is Phase.SERVING or not changing):
            return node
        if changing and phase is Phase.SERVING:  # /healthz answers 200 before the join
            raise Unavailable(f"node {self.cfg.Cluster.node} is joining cluster {self.cfg.Cluster.name!r}: "
                              "try again in a moment")
        if changing:
            raise Unavailable(f"service is {phase}: the cluster cannot be changed now")
        if self.clustered:
            raise Unavailable(f"node {self.cfg.Cluster.node} is {phase} and not in the cluster yet")
        raise NotFound("this node is not in a cluster (vidrec serve --cluster NAME)")

    def _cluster_add(self, spec: StreamSpec) -> dict[str, Any]:
        return self._node(changing=True).add(spec)

    def _cluster_remove(self, stream_id: str) -> dict[str, Any]:
        return self._node(changing=True).remove(stream_id)

    def cluster(self) -> dict[str, Any]:
        """``GET /cluster``."""
        return self._node(changing=False).view()

    def cluster_streams(self) -> list[dict[str, Any]]:
        """``GET /streams?scope=cluster``."""
        return self._node(changing=False).streams()

    # The ClusterHost protocol of workers/cluster_member.py (called by the member's thread and listener).
    def cluster_specs(self) -> dict[str, StreamSpec | None]:
        with self._lock:
            return {e.id: None if e.removing else self._cluster_started.get(e.id) for e in self._streams}

    def cluster_start(self, spec: StreamSpec) -> None:
        with self._lock:
            if self._phase is not Phase.SERVING or spec.id in self._streams:
                return
            try:
                plan = plan_from_spec(spec)
                self._streams.check_room(plan.id)
            except (ValueError, Conflict) as exc:
                if (spec.id, str(exc)) not in self._cluster_refused:
                    self._cluster_refused.add((spec.id, str(exc)))
                    log.error("%s: not started on this node: %s", spec.id, exc)
                return
            self._cluster_started[spec.id] = spec
            self._add(plan)

    def cluster_stop(self, stream_id: str) -> None:
        with self._lock:
            entry = self._streams.get(stream_id)
            if entry is None or entry.removing:
                return
            self._stop_stream(entry, "stopping (cluster)")

    def cluster_report(self) -> tuple[list[dict[str, Any]], int | None]:
        with self._lock:
            stats = self._totals.service()
            version = stats.gallery_version if stats is not None else (self._ready.gallery_version if self._ready else None)
            streams = [{"id": e.id, "state": "stopping" if e.removing else e.state.value, "since": round(e.since, 3)}
                       for e in self._streams]
            return streams, version

    # -- metrics, recognitions and overlay snapshots (thread-safe) ---------------------------------------------
    def metrics(self) -> bytes:
        text = m.render(self._collector)
        if self._cluster is not None:
            text += self._cluster.metrics_text()
        return text

    def metrics_snapshot(self) -> m.ServiceMetrics:
        from workers import __version__

        with self._lock:
            stats = self._totals.service()
            processes: dict[str, int | None] = {"supervisor": os.getpid(),
                                                "inference": self._inference.pid if self._inference else None}
            for child in self._ingest:
                processes[child.name] = child.pid
            return m.ServiceMetrics(
                version=__version__, run_id=self.run_id,
                streams=[views.stream_metrics(entry, self._totals) for entry in self._streams],
                sinks=views.sink_metrics(stats, self._sink_names),
                batches=stats.batches if stats else 0,
                batch_size=stats.batch_size if stats else None,
                batch_wait=stats.batch_wait_seconds if stats else None,
                inference=dict(stats.inference_seconds) if stats else {},
                gallery_entries=stats.gallery_entries if stats else 0,
                gallery_version=stats.gallery_version if stats else None,
                gallery_load_errors=stats.gallery_load_errors if stats else 0,
                processes=processes, restarts=dict(self._restart_totals),
                node=self.cfg.Cluster.node or "",
            )

    def recognitions(self) -> dict[str, Any]:
        """Named objects per gallery label in the published results (top labels; docs/metrics.md)."""
        with self._lock:
            return views.recognitions(self._totals.service())

    def track_events(self, after: int | None, limit: int) -> dict[str, Any]:
        """The newest track events of every stream (workers/track_feed.py), after event number ``after``."""
        return self.track_feed.page(after, limit)

    def thumbnail(self, stream_id: str, run_id: str, track_id: int) -> bytes:
        """The JPEG of a track's best crop, while it is among the newest kept."""
        jpeg = self.track_feed.thumbnail(stream_id, run_id, track_id)
        if jpeg is None:
            raise NotFound(f"no thumbnail of track {track_id} of stream {stream_id!r} in run {run_id!r} "
                           f"(kept: the newest {self.track_feed.keep_thumbnails})")
        return jpeg

    def snapshot(self, stream_id: str, index: int | None = None) -> Snapshot:
        """The newest overlay snapshot of a stream (or of frame ``index``); asks inference for more."""
        with self._lock:
            self._entry(stream_id)
            until = self.snapshots.watch_due(stream_id)
            if until is not None:
                self._inference_control(Watch(stream_id, until))
        snap = self.snapshots.get(stream_id, index)
        if snap is None:
            what = "no snapshot yet" if index is None else f"no snapshot of frame {index} (kept: the newest {self.snapshots.keep})"
            raise NotFound(f"stream {stream_id!r}: {what}")
        return snap
