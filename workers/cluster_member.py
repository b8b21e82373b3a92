"""A node's membership in its cluster: which streams this node runs, decided by a Kafka consumer group.

One thread (``ClusterMember``, started by the supervisor in `vidrec serve --cluster NAME`) holds three Kafka
clients, none of which ever waits on inference (that is another process; the supervisor's lock is held only
for the registry's bookkeeping):

- the **member**: a ``KafkaConsumer`` in group NAME subscribed to the streams topic, with the cooperative-sticky
  assignor (a rebalance moves only the partitions that change owner, so the streams that stay keep running) and,
  with ``Cluster.static_membership``, ``group_instance_id`` = the node id (a node restarted within the session
  timeout gets its partitions back without a rebalance). Its records are not read: it is there for the
  partitions the group gives it, through the rebalance listener below.
- the **catalog**: a consumer outside any group reading the whole streams topic from its start (the topic is
  compacted, so this is the current set of streams, workers/cluster_specs.py). Every node knows every stream:
  ``POST /streams`` can refuse a duplicate and ``GET /streams?scope=cluster`` list the pending ones.
- the **nodes view**: a producer of this node's report and a consumer of everyone's (workers/cluster_view.py).

This node runs exactly the streams of the catalog whose key falls in a partition it owns (``wanted``), and
``reconcile`` makes the supervisor's registry match: it starts the missing ones and stops the others.

At most one owner. The cooperative protocol gives a partition to its new owner only in the rebalance after the
old owner revoked it, and ``on_partitions_revoked`` returns only once the streams of the revoked partitions
have stopped (drained: the supervisor's ``StreamRemoved``), so two nodes publish one stream only when the old
owner could not stop it in time (logged) or was cut off: a node that has not heard from the group coordinator
for longer than the session timeout — after which the group gives its partitions to others — stops its
streams itself (``fenced``) and starts them again only when the group confirms it still owns them. What a
consumer of the results sees at a handover: ``run_id`` and ``node`` change, ``seq`` starts again.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.errors import KafkaError

from config import VidrecConfig
from config.schema import StreamSpec
from workers.cluster_specs import BadSpec, client_config, decode_record, nodes_topic, partition_of, streams_topic
from workers.cluster_view import NodeReport, NodesView, gallery_check

log = logging.getLogger("vidrec")

__all__ = ["ClusterHost", "ClusterMember", "coordinator_silent_s", "heartbeat_answered_since", "plan_changes"]


class ClusterHost(Protocol):
    """What the member needs from the supervisor (thread-safe)."""

    def cluster_specs(self) -> dict[str, StreamSpec | None]:
        """Every stream registered here: its spec (None while it is being removed)."""

    def cluster_start(self, spec: StreamSpec) -> None: ...

    def cluster_stop(self, stream_id: str) -> None:
        """Start removing a stream (it drains, then leaves the registry)."""

    def cluster_report(self) -> tuple[list[dict[str, Any]], int | None]:
        """This node's streams ({"id", "state", "since"}) and gallery version."""


@dataclass(frozen=True)
class Changes:
    start: list[StreamSpec]
    stop: list[str]


def plan_changes(wanted: dict[str, StreamSpec], here: dict[str, StreamSpec | None]) -> Changes:
    """What makes the streams here (``here``: spec, None while being removed) the ``wanted`` ones: stop what is
    not wanted or wanted with another spec (it starts again, with the new one, once it is gone); start what is
    wanted and not here."""
    stop = [sid for sid, spec in here.items() if spec is not None and wanted.get(sid) != spec]
    start = [spec for sid, spec in wanted.items() if sid not in here]
    return Changes(start=sorted(start, key=lambda s: s.id), stop=sorted(stop))


def coordinator_silent_s(consumer: KafkaConsumer, now: float) -> float:
    """Seconds since the group coordinator last confirmed this member (a heartbeat answered, or the group
    joined). kafka-python 3.0.12 keeps this in its coordinator's ``heartbeat`` and exposes no public
    accessor (its ``last-heartbeat-seconds-ago`` metric counts from the last *sent* heartbeat); the version
    is pinned."""
    heartbeat = consumer._coordinator.heartbeat  # noqa: SLF001 - see the docstring
    return now - max(heartbeat.last_receive, heartbeat.last_reset)


def heartbeat_answered_since(consumer: KafkaConsumer, since: float) -> bool:
    """Whether the coordinator answered a heartbeat of this member after ``since`` (monotonic), i.e. confirmed
    it is still in the group. Not ``last_reset``: kafka-python also resets its timers when it merely finds the
    coordinator again (after a broker restart, say), which says nothing of this member's membership."""
    return consumer._coordinator.heartbeat.last_receive > since  # noqa: SLF001 - see coordinator_silent_s


class _Listener(ConsumerRebalanceListener):
    """Runs on kafka-python's network thread: ``revoked`` blocks it (heartbeats included) while the streams
    drain, bounded by ``ClusterMember.stop_wait_s``, which is kept under the session timeout."""

    def __init__(self, member: "ClusterMember") -> None:
        self.member = member

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.member.partitions_gone({tp.partition for tp in revoked}, "revoked")

    def on_partitions_lost(self, lost: Any) -> None:
        self.member.partitions_gone({tp.partition for tp in lost}, "lost")

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.member.partitions_added({tp.partition for tp in assigned})


class ClusterMember:
    def __init__(self, cfg: VidrecConfig, host: ClusterHost, *, partitions: int, http: str | None, run_id: str) -> None:
        self.cfg = cfg
        self.section = cfg.Cluster
        self.node = cfg.Cluster.node or "node"
        self.host = host
        self.partitions = partitions  # of the streams topic
        self.http = http
        self.run_id = run_id
        self.topic = streams_topic(cfg)
        self.nodes_topic = nodes_topic(cfg)
        self.session_s = self.section.session_timeout_ms / 1000
        # A revocation waits this long for its streams to drain: under the session timeout, since the
        # listener holds kafka-python's network thread (no heartbeat) meanwhile.
        self.stop_wait_s = min(cfg.Service.drain_timeout_s, self.session_s * 0.6)
        self._lock = threading.RLock()
        self._catalog: dict[str, tuple[int, StreamSpec]] = {}
        self._owned: set[int] = set()
        self._fenced = False
        self._fenced_at = 0.0  # monotonic, when the fence last went up or down
        self.bad_specs = 0
        self.nodes = NodesView(live_for_s=3 * self.section.report_interval_s)
        self._stop = threading.Event()
        self._left = threading.Event()
        self._thread: threading.Thread | None = None
        self._member: KafkaConsumer | None = None
        self._catalog_reader: KafkaConsumer | None = None
        self._nodes_reader: KafkaConsumer | None = None
        self._reporter: KafkaProducer | None = None
        self.failure: str | None = None
        self._gallery_warning: str | None = None
        self._report_soon = threading.Event()

    # ---------------------------------------------------------------------------------------- lifecycle ----
    def start(self) -> None:
        """Connect every client (raises OSError with one line when the broker cannot be reached), then poll in
        a thread."""
        # kafka-python logs every connection and metadata update at INFO: this node says what matters itself.
        logging.getLogger("kafka").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
        try:
            self._catalog_reader = self._whole_topic_reader(self.topic, "catalog")
            self._nodes_reader = self._whole_topic_reader(self.nodes_topic, "nodes")
            self._reporter = KafkaProducer(**client_config(self.cfg, f"vidrec-{self.node}-report"), acks=1,
                                           linger_ms=0, max_block_ms=5000)
            member_config: dict[str, Any] = dict(
                group_id=self.section.name, enable_auto_commit=False, auto_offset_reset="earliest",
                partition_assignment_strategy=[CooperativeStickyAssignor],
                session_timeout_ms=self.section.session_timeout_ms,
                heartbeat_interval_ms=self.section.heartbeat_interval_ms,
                # a rebalance waits at most this long for members to rejoin (one stuck node holds up the others)
                max_poll_interval_ms=max(30_000, 3 * self.section.session_timeout_ms),
                fetch_max_wait_ms=100,
            )
            if self.section.static_membership:
                member_config["group_instance_id"] = self.node
            self._member = KafkaConsumer(**client_config(self.cfg, f"vidrec-{self.node}-member"), **member_config)
            # The member must know the topic's partitions before it joins: a clean-clone CI run saw the node that
            # had just created the topic join with "no partition metadata" for it and never get a partition.
            if not self._member.partitions_for_topic(self.topic):
                raise OSError(f"topic {self.topic!r} has no partitions")
            self._member.subscribe([self.topic], listener=_Listener(self))
        except (KafkaError, OSError) as exc:
            self._close_clients()
            raise OSError(f"cluster {self.section.name!r}: cannot reach Kafka at {self.cfg.Kafka.bootstrap}: {exc}") from None
        self._thread = threading.Thread(target=self._run, name="cluster", daemon=True)
        self._thread.start()
        log.info("cluster %s: node %s joining (streams topic %s, %d partitions, session timeout %.1fs%s)",
                 self.section.name, self.node, self.topic, self.partitions, self.session_s,
                 ", static membership" if self.section.static_membership else "")

    def _whole_topic_reader(self, topic: str, role: str) -> KafkaConsumer:
        consumer = KafkaConsumer(**client_config(self.cfg, f"vidrec-{self.node}-{role}"), group_id=None,
                                 enable_auto_commit=False, fetch_max_wait_ms=100)
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise OSError(f"topic {topic!r} has no partitions")
        assigned = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        return consumer

    def leave(self) -> None:
        """Leave the group: every partition is revoked (the streams drain) and the others take them at once.
        Blocks; the supervisor pumps its reports meanwhile (``left``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.stop_wait_s + 30)
        self._left.set()

    @property
    def left(self) -> bool:
        return self._left.is_set()

    def _close_clients(self) -> None:
        for client in (self._member, self._catalog_reader, self._nodes_reader):
            if client is not None:
                try:
                    client.close()
                except Exception as exc:  # noqa: BLE001 - closing at exit: say it, go on with the others
                    log.warning("cluster: closing a Kafka client: %s", exc)
        if self._reporter is not None:
            try:
                self._reporter.send(self.nodes_topic, key=self.node.encode(), value=None)  # gone: off GET /cluster
                self._reporter.close(timeout=5)
            except Exception as exc:  # noqa: BLE001
                log.warning("cluster: closing the report producer: %s", exc)

    # ---------------------------------------------------------------------------------------- the thread ---
    def _run(self) -> None:
        next_report = 0.0
        next_reconcile = 0.0
        try:
            while not self._stop.is_set():
                assert self._member is not None
                try:
                    self._member.poll(timeout_ms=100)  # drives the group: joins, heartbeats, the listener
                except KafkaError as exc:
                    log.warning("cluster: group poll: %s", exc)
                    time.sleep(0.2)
                changed = self._read_catalog()
                self._read_nodes()
                self._check_galleries()
                now = time.monotonic()
                changed |= self._check_fence(now)
                if changed or now >= next_reconcile:
                    self.reconcile()
                    next_reconcile = now + 0.5
                if now >= next_report or self._report_soon.is_set():
                    self._report_soon.clear()
                    self._report()
                    next_report = now + self.section.report_interval_s
        except Exception as exc:  # noqa: BLE001 - the control plane failing stops this node's streams, loudly
            self.failure = f"cluster thread failed: {type(exc).__name__}: {exc}"
            log.exception("cluster: %s", self.failure)
            with self._lock:
                self._owned.clear()
            self.reconcile()
        finally:
            # close() revokes every partition through the listener (the streams drain) and leaves the group
            self._close_clients()
            log.info("cluster %s: node %s left", self.section.name, self.node)

    def _read_catalog(self) -> bool:
        """New records of the streams topic; True when a stream of an owned partition changed."""
        assert self._catalog_reader is not None
        changed = False
        for records in self._catalog_reader.poll(timeout_ms=50).values():
            for record in records:
                try:
                    decoded = decode_record(record.key, record.value)
                except BadSpec as exc:
                    with self._lock:
                        self.bad_specs += 1
                    log.error("cluster: streams topic %s partition %d offset %d skipped: %s", self.topic,
                              record.partition, record.offset, exc)
                    continue
                with self._lock:
                    if decoded.spec is None:
                        self._catalog.pop(decoded.stream_id, None)
                    else:
                        self._catalog[decoded.stream_id] = (record.partition, decoded.spec)
                    changed |= record.partition in self._owned
        return changed

    def _read_nodes(self) -> None:
        assert self._nodes_reader is not None
        now = time.time()
        for records in self._nodes_reader.poll(timeout_ms=0).values():
            for record in records:
                if record.key is None:
                    continue
                made_at = min(now, record.timestamp / 1000) if record.timestamp and record.timestamp > 0 else now
                try:
                    with self._lock:
                        self.nodes.apply(record.key.decode("utf-8", "replace"), record.value, made_at)
                except ValueError as exc:
                    log.warning("cluster: nodes topic offset %d skipped: %s", record.offset, exc)

    def _check_galleries(self) -> None:
        """Nodes with different gallery versions are reported (GET /cluster's warnings, and logged once per
        change), not refused: a gallery changed through one node's API differs from the others' for a while."""
        warning = gallery_check({r.node: r.gallery_version for r, _age in self.live_nodes()})
        if warning != self._gallery_warning:
            self._gallery_warning = warning
            if warning:
                log.warning("cluster %s: %s", self.section.name, warning)

    def _check_fence(self, now: float) -> bool:
        """Fence (stop every stream here) once the coordinator has been silent longer than the session
        timeout, and lift it only when the coordinator answers a heartbeat of this member (or the group assigns
        partitions again, ``partitions_added``): finding the coordinator again after a broker restart resets
        kafka-python's timers but does not mean this member is still in the group. True when that changed."""
        assert self._member is not None
        silent = coordinator_silent_s(self._member, now)
        with self._lock:
            if self._fenced:  # lifted by a heartbeat answered since the fence, or a join (partitions_added)
                fenced = bool(self._owned) and not heartbeat_answered_since(self._member, self._fenced_at)
            else:
                fenced = bool(self._owned) and silent > self.session_s
            if fenced == self._fenced:
                return False
            self._fenced = fenced
            self._fenced_at = now
            owned = bool(self._owned)
        if not fenced and not owned:  # its partitions were lost meanwhile: nothing to run until it rejoins
            log.warning("cluster: fence lifted: this node owns no partition now; it rejoins the group")
        elif fenced:
            log.error("cluster: no word from the group coordinator for %.1fs (session timeout %.1fs): this node "
                      "stops its streams (the group gives them to others)", silent, self.session_s)
        else:
            log.warning("cluster: the group coordinator answers again: this node runs its streams again")
        return True

    def _report(self) -> None:
        assert self._reporter is not None
        streams, gallery_version = self.host.cluster_report()
        with self._lock:
            report = NodeReport(node=self.node, http=self.http, run_id=self.run_id, reported_at=time.time(),
                                partitions=sorted(self._owned), streams=streams, gallery_version=gallery_version,
                                fenced=self._fenced)
        try:
            self._reporter.send(self.nodes_topic, key=self.node.encode(), value=report.encode())
        except KafkaError as exc:
            log.warning("cluster: node report not sent: %s", exc)

    # ---------------------------------------------------------------------------------------- decisions ---
    def wanted(self) -> dict[str, StreamSpec]:
        with self._lock:
            if self._fenced:
                return {}
            return {sid: spec for sid, (part, spec) in self._catalog.items() if part in self._owned}

    def reconcile(self) -> None:
        with self._lock:
            changes = plan_changes(self.wanted(), self.host.cluster_specs())
            for stream_id in changes.stop:
                self.host.cluster_stop(stream_id)
            for spec in changes.start:
                self.host.cluster_start(spec)
        if changes.start or changes.stop:
            self._report_soon.set()  # GET /cluster on every node shows the change without waiting a period

    def partitions_added(self, partitions: set[int]) -> None:
        with self._lock:
            self._owned |= partitions
            self._fenced = False  # the group just confirmed this member
        log.info("cluster: partitions %s assigned (now %s)", sorted(partitions), sorted(self._owned))
        self.reconcile()

    def partitions_gone(self, partitions: set[int], how: str) -> None:
        """Revoked (or lost): stop their streams and wait, up to ``stop_wait_s``, until they are gone."""
        with self._lock:
            self._owned -= partitions
            moving = [sid for sid in self.host.cluster_specs() if partition_of(sid, self.partitions) in partitions]
        log.info("cluster: partitions %s %s: stopping %s", sorted(partitions), how, moving or "no stream")
        self.reconcile()
        deadline = time.monotonic() + self.stop_wait_s
        while any(sid in self.host.cluster_specs() for sid in moving):
            if time.monotonic() > deadline:
                left = [sid for sid in moving if sid in self.host.cluster_specs()]
                log.error("cluster: %s still stopping after %.1fs: the next owner may start them before they "
                          "end here", left, self.stop_wait_s)
                return
            time.sleep(0.02)
        if moving:
            log.info("cluster: %s stopped (partitions %s %s)", moving, sorted(partitions), how)

    # ---------------------------------------------------------------------------------------- views -------
    def catalog(self) -> dict[str, StreamSpec]:
        with self._lock:
            return {sid: spec for sid, (_part, spec) in self._catalog.items()}

    def knows(self, stream_id: str) -> bool:
        with self._lock:
            return stream_id in self._catalog

    def live_nodes(self) -> list[tuple[NodeReport, float]]:
        with self._lock:
            return self.nodes.live(time.time())

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"owned": sorted(self._owned), "fenced": self._fenced, "bad_specs": self.bad_specs,
                    "streams_known": len(self._catalog)}
