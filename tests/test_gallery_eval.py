"""Retrieval metrics with hand-computed numbers, and `vidrec gallery eval` on real photo crops."""
from __future__ import annotations

import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.gallery_eval import (
    AcceptPoint,
    RetrievalReport,
    accept_point,
    suggest_acceptance,
    ThresholdPoint,
    average_precision,
    evaluate,
    mean_average_precision,
    recall_at_k,
    relevance,
    suggest_score_thres,
    threshold_point,
)
from tests.cli_helpers import run_vidrec

# Three queries against a gallery holding "a" twice and "b" once; "c" is not enrolled.
QUERY_LABELS = ["a", "b", "c"]
RANKED = [["a", "b", "a"], ["a", "a", "b"], ["a", "b", None]]
N_RELEVANT = [2, 1, 0]
TOP1 = [0.9, 0.6, 0.55]


def test_relevance_marks_same_label_and_never_a_missing_entry() -> None:
    rel = relevance(QUERY_LABELS, RANKED)
    assert rel.tolist() == [[True, False, True], [False, False, True], [False, False, False]]


def test_recall_at_k_counts_queries_with_a_hit_in_the_top_k() -> None:
    rel = relevance(QUERY_LABELS, RANKED)[:2]  # the answerable queries
    assert recall_at_k(rel, 1) == pytest.approx(1 / 2)
    assert recall_at_k(rel, 2) == pytest.approx(1 / 2)
    assert recall_at_k(rel, 3) == pytest.approx(1.0)
    assert recall_at_k(rel, 5) == pytest.approx(1.0)  # k beyond the ranking: all of it
    assert math.isnan(recall_at_k(np.zeros((0, 3), bool), 1))


def test_average_precision_by_hand() -> None:
    # hits at ranks 1 and 3 of 2 relevant: (1/1 + 2/3) / 2
    assert average_precision(np.array([1, 0, 1], bool), 2) == pytest.approx((1 + 2 / 3) / 2)
    # one hit at rank 3 of 1 relevant: 1/3
    assert average_precision(np.array([0, 0, 1], bool), 1) == pytest.approx(1 / 3)
    # truncated at K=2 with R=3: a hit at rank 2 gives (1/2) / min(3, 2)
    assert average_precision(np.array([0, 1], bool), 3) == pytest.approx(0.25)
    # a perfect truncated list scores 1 however many relevant entries lie beyond it
    assert average_precision(np.array([1, 1], bool), 5) == pytest.approx(1.0)
    assert average_precision(np.array([0, 0, 0], bool), 2) == 0.0
    with pytest.raises(ValueError):
        average_precision(np.array([1, 1], bool), 1)


def test_mean_average_precision_by_hand() -> None:
    rel = relevance(QUERY_LABELS, RANKED)[:2]
    assert mean_average_precision(rel, [2, 1]) == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2)


def test_threshold_point_by_hand() -> None:
    point = threshold_point([0.9, 0.8, 0.5], [0.7, 0.4], 0.6)
    assert (point.precision, point.recall, point.f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    nothing = threshold_point([0.5], [0.4], 0.95)
    assert math.isnan(nothing.precision) and nothing.recall == 0.0 and nothing.f1 == 0.0


def test_suggested_threshold_is_the_middle_of_the_best_f1_run() -> None:
    # F1 is 1 for every t in (0.60, 0.90]: on the 0.01 grid, 0.61..0.90, whose middle is 0.75.
    point = suggest_score_thres([0.9], [0.6, 0.55])
    assert point == ThresholdPoint(0.75, 1.0, 1.0, 1.0)


def test_suggested_threshold_trades_precision_for_recall_where_f1_says() -> None:
    # right 0.9 0.8 0.5, wrong 0.7 0.4. F1 by range of t:
    #   <=0.40: 3 kept right, 2 wrong -> 6/8   (0.40,0.50]: 3, 1 -> 6/7 (best)
    #   (0.50,0.70]: 2, 1, 1 missed -> 4/6     (0.70,0.80]: 2, 0, 1 missed -> 4/5   (0.80,0.90]: 2/4
    point = suggest_score_thres([0.9, 0.8, 0.5], [0.7, 0.4])
    assert point is not None
    assert point.threshold == pytest.approx(0.45)
    assert (point.precision, point.recall, point.f1) == pytest.approx((0.75, 1.0, 6 / 7))


def test_suggested_threshold_without_wrong_matches_sits_at_the_lowest_right_score() -> None:
    point = suggest_score_thres([0.8, 0.6], [])
    assert point is not None and point.threshold == pytest.approx(0.6)
    assert (point.precision, point.recall) == (1.0, 1.0)


def test_no_right_match_means_no_suggestion() -> None:
    assert suggest_score_thres([], [0.9, 0.3]) is None


def test_evaluate_puts_it_together() -> None:
    report = evaluate(QUERY_LABELS, RANKED, TOP1, N_RELEVANT, score_thres=0.58)
    assert (report.queries, report.answerable, report.ranked) == (3, 2, 3)
    assert report.recall == pytest.approx({1: 0.5, 5: 1.0})
    assert report.mean_ap == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2)
    # right top-1: query a (0.9); wrong: b's top-1 is "a" (0.6), and c cannot be right (0.55)
    assert (report.right_top1, report.wrong_top1) == (1, 2)
    assert report.suggestion == ThresholdPoint(0.75, 1.0, 1.0, 1.0)
    assert report.current is not None
    assert (report.current.precision, report.current.recall) == pytest.approx((0.5, 1.0))
    assert report.lines() == [
        "recall@1: 0.500",
        "recall@5: 1.000",
        "mAP: 0.583",
        "suggested score_thres: 0.75 (precision 1.00, recall 1.00)",
        "current score_thres: 0.58 (precision 0.50, recall 1.00)",
    ]


def test_report_lines_have_the_documented_form() -> None:
    report = RetrievalReport(
        queries=100, answerable=100, recall={1: 0.93, 5: 0.99}, mean_ap=0.871, ranked=50, right_top1=93,
        wrong_top1=7, suggestion=ThresholdPoint(0.74, 0.95, 0.90, 0.92), current=None,
    )
    assert report.lines() == [
        "recall@1: 0.930",
        "recall@5: 0.990",
        "mAP: 0.871",
        "suggested score_thres: 0.74 (precision 0.95, recall 0.90)",
    ]


# ---- the command line, on real crops ------------------------------------------------------------------------

# Two consecutive frames of the Middlebury "RubberWhale" sequence (opencv-doc): five objects, boxes
# checked by eye on rubberwhale1.png, and still around each object in rubberwhale2.png.
WHALE_OBJECTS = {
    "green whale": (221, 92, 318, 183),
    "shell": (59, 140, 151, 178),
    "orange D": (151, 226, 302, 323),
    "orange wheel": (70, 291, 183, 388),
    "yellow box": (393, 253, 584, 388),
}


def _media(repo_dir: Path, name: str) -> Path:
    path = repo_dir / ".cache" / "media" / name
    assert path.is_file(), f"{path} missing: run scripts/fetch-media"
    return path


def test_cli_gallery_eval_prints_the_metric_lines(tmp_path: Path, repo_dir: Path, model_dir: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    gallery_lines, query_lines = [], []
    for frame in (1, 2):
        image = cv2.imread(str(_media(repo_dir, f"rubberwhale{frame}.png")))
        for label, (x1, y1, x2, y2) in WHALE_OBJECTS.items():
            name = f"{label.replace(' ', '_')}_{frame}.png"
            cv2.imwrite(str(root / name), image[y1:y2, x1:x2])
            (gallery_lines if frame == 1 else query_lines).append(f"{name}\t{label}")
    # an open-set query: an object the gallery does not know, so some top-1 is wrong
    cv2.imwrite(str(root / "box.png"), cv2.imread(str(_media(repo_dir, "box.png"))))
    query_lines.append("box.png\tcookie box")
    (tmp_path / "gallery.txt").write_text("\n".join(gallery_lines) + "\n")
    (tmp_path / "query.txt").write_text("\n".join(query_lines) + "\n")
    # --unknown: one more object the gallery does not hold, listed as such (issue 13's acceptance rule)
    cv2.imwrite(str(root / "graffiti.png"), cv2.imread(str(_media(repo_dir, "graf1.png"))))
    (tmp_path / "unknown.txt").write_text("graffiti.png\tgraffiti\n")
    config = [
        "-o", f"IndexProcess.data_file={tmp_path / 'gallery.txt'}",
        "-o", f"IndexProcess.image_root={root}",
        "-o", f"IndexProcess.index_dir={tmp_path / 'index'}",
    ]
    build = run_vidrec("gallery", "build", *config)
    assert build.returncode == 0, build.stderr

    proc = run_vidrec("gallery", "eval", "--query", tmp_path / "query.txt", "--unknown", tmp_path / "unknown.txt", *config)
    assert proc.returncode == 0, proc.stderr
    print(proc.stdout)
    lines = proc.stdout.splitlines()
    # consecutive frames of the same objects: every query finds its object first
    assert lines[:3] == ["recall@1: 1.000", "recall@5: 1.000", "mAP: 1.000"]
    suggestion = re.fullmatch(r"suggested score_thres: (-?\d\.\d\d) \(precision 1\.00, recall 1\.00\)", lines[3])
    assert suggestion, lines[3]
    assert re.fullmatch(r"current score_thres: 0\.40 \(precision \S+, recall \S+\)", lines[4]), lines[4]
    # every right answer kept with no wrong one: the suggested rule keeps all five, the defaults at least 4
    assert re.fullmatch(r"suggested acceptance: score_thres -?\d\.\d\d, margin_thres \d\.\d\d "
                        r"\(precision 1\.00, recall 1\.00\)", lines[5]), lines[5]
    current = re.fullmatch(r"current acceptance: score_thres 0\.40, margin_thres 0\.16 \(precision (\S+), recall (\S+)\)", lines[6])
    assert current and current[1] == "1.00" and float(current[2]) >= 0.8, lines[6]
    assert "7 queries (5 with a label in the gallery)" in proc.stderr


def test_cli_gallery_eval_leaves_a_query_out_of_its_own_ranking(tmp_path: Path, repo_dir: Path, model_dir: Path) -> None:
    """The gallery's own data_file as the query file: each image must find the OTHER view of its object."""
    root = tmp_path / "images"
    root.mkdir()
    lines = []
    for frame in (1, 2):
        image = cv2.imread(str(_media(repo_dir, f"rubberwhale{frame}.png")))
        for label, (x1, y1, x2, y2) in WHALE_OBJECTS.items():
            name = f"{label.replace(' ', '_')}_{frame}.png"
            cv2.imwrite(str(root / name), image[y1:y2, x1:x2])
            lines.append(f"{name}\t{label}")
    (tmp_path / "gallery.txt").write_text("\n".join(lines) + "\n")
    config = [
        "-o", f"IndexProcess.data_file={tmp_path / 'gallery.txt'}",
        "-o", f"IndexProcess.image_root={root}",
        "-o", f"IndexProcess.index_dir={tmp_path / 'index'}",
    ]
    assert run_vidrec("gallery", "build", *config).returncode == 0
    proc = run_vidrec("gallery", "eval", "--query", tmp_path / "gallery.txt", *config)
    assert proc.returncode == 0, proc.stderr
    # without leaving itself out, every query would trivially find itself at cosine 1.0; with it, the
    # one relevant entry is the other frame's crop, and it still comes first
    assert proc.stdout.splitlines()[:3] == ["recall@1: 1.000", "recall@5: 1.000", "mAP: 1.000"]
    assert "ranked over the top 9" in proc.stderr


# (scores, margins) of right and wrong top-1 answers, for the acceptance rule.
@pytest.mark.parametrize(("right", "wrong", "floor", "expected"), [
    # a wrong answer scores high but sits between two labels: only the margin separates it, and both
    # right answers stay (the score threshold would have to drop one of them)
    (([0.9, 0.6], [0.3, 0.2]), ([0.8], [0.02]), 0.95, (0.6, 0.2, 1.0, 1.0)),
    # the wrong answer has a clear margin but a low score: the score separates it
    (([0.9, 0.6], [0.3, 0.2]), ([0.5], [0.4]), 0.95, (0.6, 0.2, 1.0, 1.0)),
    # a wrong answer no rule can tell from the right ones: precision 2/3 at most, under the floor
    (([0.9, 0.6], [0.3, 0.2]), ([0.95], [0.5]), 0.95, None),
    # ... but a floor of 0.6 takes it, keeping every right answer
    (([0.9, 0.6], [0.3, 0.2]), ([0.95], [0.5]), 0.6, (0.6, 0.2, 2 / 3, 1.0)),
    # no right answer at all: nothing to suggest
    (([], []), ([0.5], [0.1]), 0.95, None),
])
def test_suggest_acceptance(right, wrong, floor, expected) -> None:
    point = suggest_acceptance(right, wrong, min_precision=floor)
    if expected is None:
        assert point is None
    else:
        # highest recall first; among ties the highest score_thres, then the highest margin_thres
        assert (point.score_thres, point.margin_thres, point.precision, point.recall) == pytest.approx(expected)


def test_accept_point_counts_both_thresholds() -> None:
    point = accept_point(([0.9, 0.6, 0.5], [0.3, 0.05, 0.2]), ([0.7, 0.4], [0.1, 0.3]), 0.45, 0.08)
    # right kept: 0.9 and 0.5 (0.6 fails the margin); wrong kept: 0.7 (0.4 fails the score)
    assert point == AcceptPoint(0.45, 0.08, 2 / 3, 2 / 3)


def test_evaluate_with_margins_reports_the_acceptance_lines() -> None:
    report = evaluate(QUERY_LABELS, RANKED, TOP1, N_RELEVANT, score_thres=0.5, margins=[0.2, 0.01, 0.3],
                      margin_thres=0.1)
    lines = report.lines()
    # query a is right (0.9, margin 0.2); b's top-1 is wrong (0.6, margin 0.01); c is unknown (0.55, margin 0.3)
    assert lines[-2] == "suggested acceptance: score_thres 0.90, margin_thres 0.20 (precision 1.00, recall 1.00)"
    assert lines[-1] == "current acceptance: score_thres 0.50, margin_thres 0.10 (precision 0.50, recall 1.00)"
