"""`vidrec consume`: the reference consumer of vidrec's Kafka topics, the one to copy when you build your own.

vidrec publishes at least once (docs/robustness.md), so a consumer has three things to do besides reading:

1. **Drop repeats.** A result is named by (``run_id``, ``stream_id``, ``seq``): a broker that lost an
   acknowledgement gets the same result again. Keep the highest ``seq`` seen per (``run_id``, ``stream_id``);
   one not above it is a repeat. (A stream's results share a key, hence a partition, so they come in order.)
2. **See gaps.** ``seq`` counts a stream's results in a run one by one: a jump is results lost (a full spool,
   a killed worker), counted by the service in ``vidrec_sink_dropped_total``.
3. **Expect new runs.** A restarted service or inference worker, or a stream moved to another node of a cluster
   (``node`` says which), has a new ``run_id`` and starts ``seq`` at 0. The old run's results may still come
   (a restarted node publishes what its killed run had spooled first): they are another key, not a repeat.

Track events (the ``<topic>.tracks`` topic) have no ``seq``; a repeat is the same event of the same track at the
same frame. Several copies started with one ``--group`` share the topics' partitions (a Kafka consumer group):
each stream is read by one copy. Offsets are committed after what a poll returned was handled, so a copy that
dies is followed by one that reads its last results again: at least once, here too, and rule 1 drops them.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import KafkaError

from stream.errors import SinkError



def log_line(line: str) -> None:
    """One line per result, event or gap on stdout, flushed: a reader of the pipe sees each as it comes."""
    print(line, flush=True)


REPEAT, FIRST, NEXT, GAP = "repeat", "first", "next", "gap"


def seq_verdict(last: int | None, seq: int) -> tuple[str, int]:
    """What ``seq`` is after ``last`` (the highest seq seen of its run and stream, None: none yet), and how many
    results are missing before it."""
    if last is None:
        return FIRST, 0  # joined mid-run (or at its start): nothing to compare with
    if seq <= last:
        return REPEAT, 0
    return (NEXT, 0) if seq == last + 1 else (GAP, seq - last - 1)


@dataclass
class StreamTally:
    """One stream's numbers for ``--summary``."""

    results: int = 0
    events: int = 0
    repeats: int = 0
    gaps: int = 0
    missing: int = 0
    runs: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)


class Deduplicator:
    """Rules 1 and 2 for results, and repeats of track events (remembering the newest ``keep_events``)."""

    def __init__(self, keep_events: int = 100_000) -> None:
        self.last_seq: dict[tuple[str, str], int] = {}
        self.tally: dict[str, StreamTally] = defaultdict(StreamTally)
        self._events: OrderedDict[tuple, None] = OrderedDict()
        self._keep_events = keep_events

    def result(self, msg: dict[str, Any]) -> tuple[str, int]:
        """(verdict, missing before it) of a frame result; a result without ``run_id``/``seq`` (from `vidrec video`)
        is always new."""
        tally = self.tally[msg["stream_id"]]
        run, seq = msg.get("run_id"), msg.get("seq")
        verdict, missing = (FIRST, 0) if run is None or seq is None else seq_verdict(
            self.last_seq.get((run, msg["stream_id"])), seq)
        if verdict == REPEAT:
            tally.repeats += 1
            return verdict, 0
        if run is not None and seq is not None:
            self.last_seq[(run, msg["stream_id"])] = seq
            tally.runs.add(run)
        tally.results += 1
        tally.gaps += verdict == GAP
        tally.missing += missing
        if msg.get("node"):
            tally.nodes.add(msg["node"])
        return verdict, missing

    def event(self, msg: dict[str, Any]) -> bool:
        """Whether a track event is new (not a repeat)."""
        key = (msg.get("run_id"), msg["stream_id"], msg["track_id"], msg["event"], msg["frame_index"])
        tally = self.tally[msg["stream_id"]]
        if key in self._events:
            tally.repeats += 1
            return False
        self._events[key] = None
        if len(self._events) > self._keep_events:
            self._events.popitem(last=False)
        tally.events += 1
        return True


def describe_result(msg: dict[str, Any]) -> str:
    named = [f"{o['label']}:{o['score']:.2f}" for o in msg["objects"] if o["label"] is not None]
    return (f"{msg['stream_id']} run={msg.get('run_id')} seq={msg.get('seq')} node={msg.get('node')} "
            f"frame={msg['frame_index']} objects={len(msg['objects'])} named={','.join(named) or '-'}")


def describe_event(msg: dict[str, Any]) -> str:
    label = "-" if msg["label"] is None else f"{msg['label']}:{msg['score']:.2f}"
    return (f"{msg['stream_id']} run={msg.get('run_id')} track={msg['track_id']} {msg['event']} {label} "
            f"node={msg.get('node')} frame={msg['frame_index']}")


def summary_lines(tally: dict[str, StreamTally]) -> list[str]:
    lines = ["stream\tresults\tevents\trepeats\tgaps\tmissing\truns\tnodes"]
    for sid in sorted(tally):
        t = tally[sid]
        lines.append(f"{sid}\t{t.results}\t{t.events}\t{t.repeats}\t{t.gaps}\t{t.missing}\t{len(t.runs)}\t"
                     f"{','.join(sorted(t.nodes)) or '-'}")
    return lines


def handle(dedup: Deduplicator, msg: dict[str, Any], *, quiet: bool, out: Callable[[str], Any] = log_line) -> None:
    """One message off a topic: a track event (it has ``event``) or a frame result; ``quiet``: count only."""
    if "event" in msg:
        if dedup.event(msg) and not quiet:
            out(describe_event(msg))
        return
    verdict, missing = dedup.result(msg)
    if quiet:
        return
    if verdict == GAP:
        out(f"{msg['stream_id']} run={msg['run_id']} gap: {missing} result(s) lost before seq={msg['seq']}")
    if verdict != REPEAT:
        out(describe_result(msg))


def run_consume(bootstrap: str, topics: list[str], *, group: str | None, stream: str | None, summary: bool,
                idle_exit_s: float | None = None, security: dict[str, Any] | None = None,
                connect_timeout_s: float = 5.0) -> int:
    """Read ``topics`` until SIGINT/SIGTERM (or ``idle_exit_s`` without a message); print as the module says."""
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # its reconnect chatter is not this command's output

    class Listener(ConsumerRebalanceListener):  # say which partitions this copy reads, as the group decides
        def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        def on_partitions_assigned(self, assigned: Any) -> None:
            parts = ",".join(f"{tp.topic}:{tp.partition}" for tp in sorted(assigned))
            print(f"vidrec: consume: reading partitions {parts or '(none)'}", flush=True, file=sys.stderr)

    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                                 enable_auto_commit=False, bootstrap_timeout_ms=int(connect_timeout_s * 1000),
                                 **(security or {}))
    except (KafkaError, OSError) as exc:
        raise SinkError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    dedup = Deduplicator()
    try:
        if group is None:  # no group: every partition, from the start
            consumer.subscribe(topics)
        else:
            consumer.subscribe(topics, listener=Listener())
        last_message = time.monotonic()
        while not stop:
            polled = consumer.poll(timeout_ms=500)
            for records in polled.values():
                for record in records:
                    if stream is not None and record.key != stream.encode():
                        continue
                    try:
                        handle(dedup, json.loads(record.value), quiet=summary)
                    except (ValueError, KeyError, TypeError) as exc:  # not a vidrec message: say so, go on
                        print(f"vidrec: consume: {record.topic}:{record.partition} offset {record.offset}: "
                              f"skipped, not a vidrec message ({type(exc).__name__}: {exc})", file=sys.stderr)
            if polled:
                last_message = time.monotonic()
                if group is not None:
                    consumer.commit()  # after handling: at least once
            elif idle_exit_s is not None and time.monotonic() - last_message > idle_exit_s:
                break
    finally:
        consumer.close()  # leaves the group now: its partitions go to the other copies at once
    if summary:
        for line in summary_lines(dedup.tally):
            log_line(line)
    return 0
