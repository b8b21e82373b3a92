"""The best crops the recognition step hands out with track events (RecognizedBatch.thumbnails, end_stream's
thumbnails=): real models, the sample gallery, the cyclist's shot of bikes.mp4."""
from __future__ import annotations

from itertools import islice
from pathlib import Path

from config import load_config
from stream.sources import open_source
from workers.gallery_job import new_gallery
from workers.recognition import RecognitionStep, TrackThumbnails
from workers.system import build_recognizer, build_system

REPO = Path(__file__).resolve().parent.parent


def test_labelled_and_ended_tracks_carry_their_best_crop(tmp_path: Path, bikes_mp4: Path, model_dir: Path) -> None:
    cfg = load_config(None, [
        f"IndexProcess.data_file={REPO / 'samples' / 'gallery' / 'data_file.txt'}",
        f"IndexProcess.image_root={REPO / 'samples' / 'gallery'}",
        f"IndexProcess.index_dir={tmp_path / 'index'}",
    ])
    new_gallery(cfg, build_recognizer(cfg))
    system = build_system(cfg)
    step = RecognitionStep.from_config(cfg, system, class_names=system.detector.class_names)
    with open_source(bikes_mp4) as source:
        frames = list(islice((f for f in source if f.index >= 100), 30))  # the cyclist's shot
    events, thumbnails = [], {}
    for start in range(0, len(frames), 6):
        batch = step.run(frames[start:start + 6])
        events += batch.events
        thumbnails.update(batch.thumbnails)
        # Exactly the tracks labelled or ended in this batch bring a crop, when they had a recognition attempt.
        assert set(batch.thumbnails) == {(e.stream_id, e.track_id) for e in batch.events
                                         if e.event in ("labelled", "ended") and e.attempts > 0}
    ended: TrackThumbnails = {}
    events += step.end_stream("bikes", "stream ended", thumbnails=ended)
    assert ended and set(ended) == {("bikes", e.track_id) for e in events
                                    if e.event == "ended" and e.reason == "stream ended" and e.attempts > 0}
    labelled = [e for e in events if e.event == "labelled"]
    assert labelled, "the sample gallery names the cyclist"
    for event in labelled:
        assert ("bikes", event.track_id) in thumbnails
    for crop in (*thumbnails.values(), *ended.values()):
        assert crop.ndim == 3 and crop.shape[2] == 3 and 0 < max(crop.shape[:2]) <= 128, crop.shape
    assert step.end_stream("bikes", "again", thumbnails=ended) == [], "a stream's tracks end once"


def test_without_tracking_no_thumbnails(bikes_mp4: Path, model_dir: Path) -> None:
    cfg = load_config(None, ["Tracker.enabled=false"])
    system = build_system(cfg)
    step = RecognitionStep.from_config(cfg, system, class_names=system.detector.class_names)
    with open_source(bikes_mp4) as source:
        batch = step.run(list(islice(source, 2)))
    assert batch.events == [] and batch.thumbnails == {}
    thumbnails: TrackThumbnails = {}
    assert step.end_stream("bikes", "stream ended", thumbnails=thumbnails) == [] and thumbnails == {}
