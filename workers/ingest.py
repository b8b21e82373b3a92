"""The ingest process of `vidrec serve`: decodes its streams and writes their frames into shared memory.

One process serves several streams, one thread each (PyAV releases the GIL while it decodes). A thread owns
its stream's source and its ``FrameProducer`` (stream/transport.py): pixels go into the stream's slot ring,
only a small ``FrameRef`` goes on the frame queue that the inference process reads.

- Live streams (``LiveSource``, stream/live.py): reconnect with backoff, watchdog, states. The ring is the
  ``live`` policy: when inference falls behind, the oldest unread frame is overwritten and counted; a live
  thread calls ``pump()`` while its camera is quiet so refs that found no room go out.
- File streams (``open_source``, stream/sources.py): the ``file`` policy waits for a free slot, so no frame is
  lost (``every_nth`` samples); at the end the producer puts an ``EndOfStream`` and the stream is ``ended``.

The supervisor talks to the process through a control queue (``AddStream``, ``RemoveStream``, ``StopIngest``;
workers/messages.py) and hears back on the process's own report pipe (workers/status_channel.py): every
state change at once (``StreamStateChanged``), counters of all streams every ``stats_interval_s``
(``IngestStats``), ``StreamRemoved`` once a removed stream's thread has finished, and ``IngestExited`` at the
end. Signals are left to the supervisor (SIGINT and SIGTERM are
ignored here, so a Ctrl-C or a process-group TERM cannot cut a drain short); the process also stops by
itself when its parent dies.

Stopping (``StopIngest``): every source is closed, then every producer ends: it announces what is pending
and gives inference up to the drain timeout to take what is written (the frames in flight) before its
``EndOfStream``. ``StopIngest(abort=True)`` does not wait.
"""
from __future__ import annotations

import logging
import os
import queue as queue_mod
import threading
import time
from dataclasses import replace
from typing import Any

from stream.errors import SourceError
from stream.live import LiveSource
from stream.sources import open_source
from stream.states import StreamState
from stream.transport import FrameProducer, StreamCounters, TransportError
from workers.counters import Drop
from workers.worker_process import ParentWatch, detach_queues, setup_child
from workers.messages import (
    AddStream,
    IngestExited,
    IngestSettings,
    IngestStats,
    RemoveStream,
    StopIngest,
    StreamIngest,
    StreamRemoved,
    StreamStateChanged,
)
from workers.plans import StreamPlan, file_path

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- one stream ---
class _StreamRunner:
    """One stream's thread: source → every_nth → producer."""

    def __init__(self, plan: StreamPlan, settings: IngestSettings, frames_queue: Any, status_queue: Any,
                 first_index: int = 0) -> None:
        self.plan = plan
        self.first_index = first_index if plan.live else 0
        self._settings = settings
        self._frames_queue = frames_queue
        self._status = status_queue
        self.stop = threading.Event()  # stop reading; the producer still drains what is written
        self.abort = threading.Event()  # stop at once: a file producer waiting for a slot gives up
        self._lock = threading.Lock()  # producer lifetime vs. counters read by the main thread
        self._state = StreamState.STARTING
        self._reason: str | None = None
        self._decoded = self._skipped = 0
        self._last_frame: float | None = None
        self._frame_count: int | None = None
        self._source: LiveSource | None = None
        self._producer: FrameProducer | None = None
        self._final_transport: StreamCounters | None = None
        self.thread = threading.Thread(target=self._run, name=f"ingest[{plan.id}]", daemon=True)

    # -- state -----------------------------------------------------------------------------------------------
    def _set_state(self, state: StreamState, reason: str | None) -> None:
        with self._lock:
            if self._state == state and reason is None:
                return
            if self._state.final:
                return
            old = self._state
            self._state = state
            if reason is not None:
                self._reason = reason
        if not self.plan.live:  # LiveSource logs its own changes
            log.info("%s: %s -> %s%s", self.plan.id, old, state, f" ({reason})" if reason else "")
        self._status.put(StreamStateChanged(self.plan.id, state, reason, time.time()))

    def _on_live_state(self, source: LiveSource, old: StreamState, new: StreamState, reason: str | None) -> None:
        self._set_state(new, reason)

    def snapshot(self) -> StreamIngest:
        with self._lock:
            source = self._source
            stats = source.stats() if source is not None else None
            if self._producer is not None:
                transport = self._producer.counters
            else:
                transport = self._final_transport
            if stats is not None:
                decoded, dropped, reconnects, errors, age = (
                    stats.frames, stats.dropped, stats.reconnects, stats.decode_errors, stats.last_frame_age_s)
            else:
                decoded, dropped, reconnects, errors = self._decoded, 0, 0, 0
                age = None if self._last_frame is None else time.monotonic() - self._last_frame
            return StreamIngest(
                state=self._state, reason=self._reason, decoded=decoded,
                dropped={Drop.EVERY_NTH.value: self._skipped, Drop.SOURCE.value: dropped},
                reconnects=reconnects, decode_errors=errors, last_frame_age_s=age,
                frame_count=self._frame_count, transport=transport,
            )

    # -- thread ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        plan, settings = self.plan, self._settings
        try:
            producer = FrameProducer(
                self._frames_queue, run_id=settings.run_id, stream_id=plan.id, policy=plan.kind.value,
                slots=settings.slots, max_frame_bytes=settings.max_frame_bytes, stop_event=self.abort,
                drain_timeout_s=min(1.0, settings.drain_timeout_s) if plan.live else settings.drain_timeout_s,
            )
        except TransportError as exc:
            self._set_state(StreamState.FAILED, f"{plan.id}: {exc}")
            return
        with self._lock:
            self._producer = producer
        try:
            if plan.live:
                self._run_live(producer)
            else:
                self._run_file(producer)
        except SourceError as exc:
            self._set_state(StreamState.FAILED, str(exc))
        except TransportError as exc:
            self._set_state(StreamState.FAILED, f"{plan.id}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug in one stream must not take the others down
            log.exception("%s: ingest thread failed", plan.id)
            self._set_state(StreamState.FAILED, f"{plan.id}: internal error: {type(exc).__name__}: {exc}")
        finally:
            try:  # with ``abort`` set (the producer's stop_event) this does not wait on inference
                producer.close()
            except TransportError as exc:
                log.warning("%s: closing the frame ring: %s", plan.id, exc)
            with self._lock:
                self._final_transport = producer.counters
                self._producer = None
            if not self._state.final:
                self._set_state(StreamState.ENDED, None)

    def _run_live(self, producer: FrameProducer) -> None:
        plan = self.plan
        source = LiveSource(plan.url, stream_id=plan.id, options=self._settings.live.options(),
                            on_state=self._on_live_state)
        with self._lock:
            self._source = source
        every_nth = plan.every_nth
        base = self.first_index
        try:
            source.start()
            while not self.stop.is_set():
                frame = source.read(timeout_s=0.1)  # raises SourceError once the source failed
                if frame is None:
                    if source.state.final:
                        return
                    producer.pump()
                    continue
                if base:
                    frame = replace(frame, index=frame.index + base)
                if every_nth > 1 and frame.index % every_nth:
                    self._skipped += 1
                    continue
                producer.send(frame)
        finally:
            source.close()

    def _run_file(self, producer: FrameProducer) -> None:
        plan = self.plan
        with open_source(file_path(plan.url), stream_id=plan.id, every_nth=plan.every_nth) as source:
            self._frame_count = source.frame_count
            for frame in source:
                if self.stop.is_set():
                    return
                self._decoded += 1
                self._last_frame = time.monotonic()
                if self._state is StreamState.STARTING:
                    self._set_state(StreamState.RUNNING, None)
                if not producer.send(frame):
                    return  # aborted
        self._set_state(StreamState.ENDED, f"{plan.display_url}: end of file")


def ingest_main(
    index: int,
    settings: IngestSettings,
    frames_queue: Any,
    control_queue: Any,
    status_queue: Any,
    log_level: int = logging.INFO,
) -> None:
    """Entry point of ingest process ``index`` (multiprocessing 'spawn')."""
    setup_child(f"ingest-{index}", log_level)
    parent = ParentWatch()
    runners: dict[str, _StreamRunner] = {}
    removing: set[str] = set()
    next_stats = 0.0
    tick = min(0.1, settings.stats_interval_s)

    def report() -> None:
        status_queue.put(IngestStats(index, os.getpid(), {sid: r.snapshot() for sid, r in runners.items()}))

    stopping: StopIngest | None = None
    while stopping is None:
        try:
            message = control_queue.get(timeout=tick)
        except queue_mod.Empty:
            message = None
        if isinstance(message, AddStream):
            plan = message.plan
            if plan.id in runners:
                log.warning("%s: already running here; add ignored", plan.id)
            else:
                runner = runners[plan.id] = _StreamRunner(plan, settings, frames_queue, status_queue,
                                                          first_index=message.first_index)
                runner.thread.start()
                log.info("%s: added (%s, %s)", plan.id, plan.kind, plan.display_url)
        elif isinstance(message, RemoveStream):
            runner = runners.get(message.stream_id)
            if runner is not None:
                runner.stop.set()
                removing.add(message.stream_id)
            else:
                status_queue.put(StreamRemoved(message.stream_id, StreamIngest.empty()))
        elif isinstance(message, StopIngest):
            stopping = message
        elif message is not None:
            log.warning("unexpected control message %r ignored", type(message).__name__)
        for sid in [sid for sid in removing if not runners[sid].thread.is_alive()]:
            removing.discard(sid)
            runner = runners.pop(sid)
            status_queue.put(StreamRemoved(sid, runner.snapshot()))
            log.info("%s: removed", sid)
        if parent.gone():
            log.error("supervisor is gone: stopping")
            detach_queues(status_queue, frames_queue)
            stopping = StopIngest(abort=True)
        now = time.monotonic()
        if now >= next_stats:
            next_stats = now + settings.stats_interval_s
            report()

    # Stop: sources first, then each producer drains what it wrote (bounded), in parallel across threads.
    for runner in runners.values():
        if stopping.abort:
            runner.abort.set()
        runner.stop.set()
    deadline = time.monotonic() + (1.0 if stopping.abort else settings.drain_timeout_s + 2.0)
    for runner in runners.values():
        runner.thread.join(max(0.0, deadline - time.monotonic()))
        if runner.thread.is_alive():
            log.warning("%s: still draining at the deadline: aborting it", runner.plan.id)
            runner.abort.set()
            runner.thread.join(2.0)
    for sid in removing:
        status_queue.put(StreamRemoved(sid, runners[sid].snapshot()))
    status_queue.put(IngestExited(index, {sid: r.snapshot() for sid, r in runners.items() if sid not in removing}))
    log.debug("exiting")

