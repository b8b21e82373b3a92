"""Tracking: follow each object of a stream, recognise it a few times, vote on its label (docs/tracking.md)."""
from models.tracking.system import FrameMeta, TrackedBatch, TrackedSystem
from models.tracking.tracker import StreamTracker, TimeWentBack, TrackerParams, clip_boxes
from models.tracking.tracks import (
    EmbedPolicy,
    StreamTracks,
    Track,
    TrackChange,
    TrackingParams,
    TrackSnapshot,
    needs_embedding,
)
from models.tracking.votes import VoteRule, Votes, attempt_weight

__all__ = [
    "EmbedPolicy", "FrameMeta", "StreamTracker", "StreamTracks", "TimeWentBack", "Track", "TrackChange",
    "TrackSnapshot", "TrackedBatch", "TrackedSystem", "TrackerParams", "TrackingParams", "VoteRule", "Votes",
    "attempt_weight", "clip_boxes", "needs_embedding",
]
