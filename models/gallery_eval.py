"""Retrieval metrics of queries against a gallery, by label, and a score threshold read from them.

Pure functions over rankings and scores; ``workers/gallery_job.py`` embeds and searches, this scores.
As PaddleClas's Eval (FAQ Q1.6.2): the gallery is the index, the queries are a second labelled set.

Definitions (a query's *relevant* entries are the gallery entries with the query's label):
- A query is *answerable* when the gallery holds at least one relevant entry. Only answerable queries enter
  recall@k and mAP: nothing in the gallery could name the others (their top-1 is always wrong, which is
  what the threshold suggestion needs to see).
- ``recall@k``: the fraction of answerable queries with at least one relevant entry among their top k
  (PaddleClas's recall@k, also called top-k accuracy).
- ``AP`` of one query over its ranked list of K entries (K = the gallery size when the whole gallery is
  ranked): ``AP = (1 / min(R, K)) * sum over ranks i <= K holding a relevant entry of precision@i``, with R
  the number of relevant entries in the gallery. For a full ranking this is the classic average precision;
  for a truncated one, a perfect top-K still scores 1, and a relevant entry that an approximate index did
  not return counts as never retrieved. ``mAP`` is the mean AP over answerable queries.
- Threshold: a label is emitted when the top-1 score >= ``score_thres`` (as ``ShituSystem`` does). At a
  threshold t, with *right* top-1 matches (top-1 label = query label) and *wrong* ones (any other, including
  every top-1 of an unanswerable query): ``precision = right kept / all kept`` and ``recall = right kept /
  all right`` (the share of right answers the threshold lets through; a query whose top-1 is wrong cannot
  be saved by any threshold). ``suggest_score_thres`` picks t on a grid (0.01 by default, as a user would
  type it) maximising F1 = 2PR / (P + R); see its docstring for ties.
- Acceptance rule (models/shitu.py ``accepted``): with each query's *margin* (top-1 score minus the best
  score of another label), a label is emitted when score >= ``score_thres`` and margin >= ``margin_thres``.
  ``suggest_acceptance`` picks both on a grid (0.01) for the highest recall whose precision reaches a floor
  (0.95 by default), as issue 13 asks: a wrong name costs more than a missing one. Queries of objects the
  gallery does not hold (``vidrec gallery eval --unknown``) are unanswerable: each top-1 of theirs is wrong.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ThresholdPoint:
    """Precision, recall and F1 of emitted labels when the top-1 score must be >= ``threshold``."""

    threshold: float
    precision: float  # nan when no label is emitted at all
    recall: float
    f1: float


@dataclass(frozen=True)
class AcceptPoint:
    """Precision and recall of emitted labels under the acceptance rule (score AND margin thresholds)."""

    score_thres: float
    margin_thres: float
    precision: float  # nan when no label is emitted at all
    recall: float

    def text(self) -> str:
        precision = "n/a" if math.isnan(self.precision) else f"{self.precision:.2f}"
        return (f"score_thres {self.score_thres:.2f}, margin_thres {self.margin_thres:.2f} "
                f"(precision {precision}, recall {self.recall:.2f})")


@dataclass(frozen=True)
class RetrievalReport:
    queries: int
    answerable: int
    recall: dict[int, float]  # k -> recall@k
    mean_ap: float
    ranked: int  # K, the length of the ranked list each query's AP was computed over
    right_top1: int
    wrong_top1: int
    suggestion: ThresholdPoint | None  # None when no query's top-1 was right
    current: ThresholdPoint | None  # at the configured score_thres, when one was given
    # With margins (evaluate(..., margins=)): the acceptance rule suggested, and at the configured thresholds.
    acceptance: AcceptPoint | None = None
    current_acceptance: AcceptPoint | None = None
    min_precision: float = 0.95
    margins_known: bool = False

    def lines(self) -> list[str]:
        """What ``vidrec gallery eval`` prints, one metric per line."""
        out = [f"recall@{k}: {value:.3f}" for k, value in sorted(self.recall.items())]
        out.append(f"mAP: {self.mean_ap:.3f}")
        if self.suggestion is None:
            out.append("suggested score_thres: none (no query's top-1 match was right)")
        else:
            out.append(f"suggested score_thres: {_point_text(self.suggestion)}")
        if self.current is not None:
            out.append(f"current score_thres: {_point_text(self.current)}")
        if self.margins_known:
            if self.acceptance is None:
                out.append(f"suggested acceptance: none reaches precision {self.min_precision:.2f}")
            else:
                out.append(f"suggested acceptance: {self.acceptance.text()}")
            if self.current_acceptance is not None:
                out.append(f"current acceptance: {self.current_acceptance.text()}")
        return out


def _point_text(point: ThresholdPoint) -> str:
    precision = "n/a" if math.isnan(point.precision) else f"{point.precision:.2f}"
    return f"{point.threshold:.2f} (precision {precision}, recall {point.recall:.2f})"


# ---- ranking metrics ---------------------------------------------------------------------------------------


def relevance(query_labels: Sequence[str], ranked_labels: Sequence[Sequence[str | None]]) -> np.ndarray:
    """(m, K) bool: entry j of query i's ranking has the query's label. ``None`` (no entry) is never relevant."""
    if len(query_labels) != len(ranked_labels):
        raise ValueError(f"{len(query_labels)} query labels but {len(ranked_labels)} rankings")
    width = max((len(row) for row in ranked_labels), default=0)
    rel = np.zeros((len(query_labels), width), dtype=bool)
    for i, (label, row) in enumerate(zip(query_labels, ranked_labels)):
        rel[i, : len(row)] = [entry is not None and entry == label for entry in row]
    return rel


def recall_at_k(rel: np.ndarray, k: int) -> float:
    """Fraction of rows (answerable queries) with a relevant entry among the first k; nan for no rows."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rel = np.asarray(rel, dtype=bool)
    if rel.shape[0] == 0:
        return math.nan
    return float(rel[:, :k].any(axis=1).mean())


def average_precision(rel_row: np.ndarray, n_relevant: int) -> float:
    """AP of one ranked list (see the module docstring); ``n_relevant`` = R, relevant entries in the gallery."""
    rel_row = np.asarray(rel_row, dtype=bool)
    if n_relevant < 1:
        raise ValueError("average precision needs at least one relevant entry")
    hits = np.flatnonzero(rel_row)
    if len(hits) > n_relevant:
        raise ValueError(f"{len(hits)} relevant entries ranked but only {n_relevant} exist")
    if not len(hits):
        return 0.0
    precisions = np.arange(1, len(hits) + 1) / (hits + 1)
    return float(precisions.sum() / min(n_relevant, len(rel_row)))


def mean_average_precision(rel: np.ndarray, n_relevant: Sequence[int]) -> float:
    """Mean AP over rows (answerable queries); nan for no rows."""
    rel = np.asarray(rel, dtype=bool)
    if rel.shape[0] != len(n_relevant):
        raise ValueError(f"{rel.shape[0]} rankings but {len(n_relevant)} relevant counts")
    if rel.shape[0] == 0:
        return math.nan
    return float(np.mean([average_precision(row, r) for row, r in zip(rel, n_relevant)]))


# ---- threshold ---------------------------------------------------------------------------------------------


def threshold_point(correct_scores: Sequence[float], wrong_scores: Sequence[float], threshold: float) -> ThresholdPoint:
    """Precision/recall/F1 of emitting the top-1 label when its score >= ``threshold``."""
    right = np.asarray(correct_scores, dtype=np.float64)
    wrong = np.asarray(wrong_scores, dtype=np.float64)
    tp = int((right >= threshold).sum())
    fp = int((wrong >= threshold).sum())
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / len(right) if len(right) else math.nan
    f1 = 2 * tp / (2 * tp + fp + (len(right) - tp)) if tp else 0.0
    return ThresholdPoint(float(threshold), precision, recall, f1)


def suggest_score_thres(
    correct_scores: Sequence[float], wrong_scores: Sequence[float], *, step: float = 0.01
) -> ThresholdPoint | None:
    """The ``score_thres`` that maximises F1 of emitted labels (module docstring), on a grid of ``step``.

    Candidates are the multiples of ``step`` in [-1, 1] (scores are similarities in that range). Many
    thresholds tie, since F1 only changes where a score lies; among the best ones, take the highest
    contiguous run (fewer wrong labels on unseen data at equal F1) and its middle, which keeps the widest
    margin to the scores on both sides. When that run reaches down to -1 (no wrong score below it) there
    is no lower margin to keep, and its top is taken: just under the lowest right score it must accept.
    Returns None when there is no right match (no threshold can help).
    """
    right = np.asarray(correct_scores, dtype=np.float64)
    if not len(right):
        return None
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    n = int(round(2 / step))
    grid = np.round(-1 + step * np.arange(n + 1), 10)
    f1 = np.array([threshold_point(right, wrong_scores, t).f1 for t in grid])
    best = np.flatnonzero(np.isclose(f1, f1.max(), rtol=0, atol=1e-12))
    # the highest run of consecutive grid points among the best
    best_set = set(best.tolist())
    top = int(best[-1])
    start = top
    while start - 1 in best_set:
        start -= 1
    chosen = top if start == 0 else (start + top) // 2
    return threshold_point(right, wrong_scores, float(grid[chosen]))


def accept_point(right: tuple[Sequence[float], Sequence[float]], wrong: tuple[Sequence[float], Sequence[float]],
                 score_thres: float, margin_thres: float) -> AcceptPoint:
    """Precision/recall of the acceptance rule; ``right``/``wrong`` = (top-1 scores, margins) of the queries
    whose top-1 is right / wrong."""
    rs, rm = (np.asarray(a, dtype=np.float64) for a in right)
    ws, wm = (np.asarray(a, dtype=np.float64) for a in wrong)
    tp = int(((rs >= score_thres) & (rm >= margin_thres)).sum())
    fp = int(((ws >= score_thres) & (wm >= margin_thres)).sum())
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / len(rs) if len(rs) else math.nan
    return AcceptPoint(float(score_thres), float(margin_thres), precision, recall)


def suggest_acceptance(
    right: tuple[Sequence[float], Sequence[float]], wrong: tuple[Sequence[float], Sequence[float]], *,
    min_precision: float = 0.95, step: float = 0.01, max_margin: float = 0.5,
) -> AcceptPoint | None:
    """The (score_thres, margin_thres) on a grid of ``step`` with the highest recall among those whose
    precision reaches ``min_precision``; ties go to the higher score_thres, then the higher margin_thres
    (the more cautious rule at equal measured precision and recall). None when no point reaches it or no
    query's top-1 is right."""
    rs, rm = (np.asarray(a, dtype=np.float64) for a in right)
    ws, wm = (np.asarray(a, dtype=np.float64) for a in wrong)
    if not len(rs):
        return None
    scores = np.round(-1 + step * np.arange(int(round(2 / step)) + 1), 10)
    margins = np.round(step * np.arange(int(round(max_margin / step)) + 1), 10)
    # (S, M) counts of kept right and wrong answers for every grid point at once.
    tp = ((rs[None, None, :] >= scores[:, None, None]) & (rm[None, None, :] >= margins[None, :, None])).sum(axis=2)
    fp = ((ws[None, None, :] >= scores[:, None, None]) & (wm[None, None, :] >= margins[None, :, None])).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
    ok = np.nan_to_num(precision, nan=0.0) >= min_precision - 1e-12
    if not ok.any():
        return None
    best_tp = tp[ok].max()
    candidates = np.argwhere(ok & (tp == best_tp))
    best_precision = max(precision[i, j] for i, j in candidates)
    i, j = max((int(i), int(j)) for i, j in candidates if precision[i, j] >= best_precision - 1e-12)
    return accept_point((rs, rm), (ws, wm), float(scores[i]), float(margins[j]))


# ---- all together ------------------------------------------------------------------------------------------


def evaluate(
    query_labels: Sequence[str],
    ranked_labels: Sequence[Sequence[str | None]],
    top1_scores: Sequence[float],
    n_relevant: Sequence[int],
    *,
    ks: Sequence[int] = (1, 5),
    score_thres: float | None = None,
    margins: Sequence[float] | None = None,
    margin_thres: float | None = None,
    min_precision: float = 0.95,
) -> RetrievalReport:
    """Score each query's ranking (best first; ``None`` where the index returned no entry).

    ``n_relevant[i]``: how many gallery entries carry query i's label (R), less any entry the query must not
    find (its own image enrolled in the gallery); 0 makes the query unanswerable. ``margins[i]``: query i's
    top-1 score minus the best score of another label; given, the report also suggests the acceptance rule
    (``suggest_acceptance``) and scores the configured one (``score_thres`` with ``margin_thres``).
    """
    m = len(query_labels)
    if len(ranked_labels) != m or len(top1_scores) != m or len(n_relevant) != m:
        raise ValueError(f"{m} queries but {len(ranked_labels)} rankings, {len(top1_scores)} scores, {len(n_relevant)} counts")
    rel = relevance(query_labels, ranked_labels)
    answerable = np.asarray(n_relevant, dtype=np.int64) > 0
    right_top1 = rel[:, 0] if rel.shape[1] else np.zeros(m, dtype=bool)
    # a query with no entry at all (empty gallery) has no top-1: neither right nor wrong
    has_top1 = np.array([bool(len(row)) and row[0] is not None for row in ranked_labels], dtype=bool)
    scores = np.asarray(top1_scores, dtype=np.float64)
    correct = scores[right_top1 & has_top1]
    wrong = scores[~right_top1 & has_top1]
    acceptance = current_acceptance = None
    if margins is not None:
        if len(margins) != m:
            raise ValueError(f"{m} queries but {len(margins)} margins")
        margin = np.asarray(margins, dtype=np.float64)
        right_pair = (correct, margin[right_top1 & has_top1])
        wrong_pair = (wrong, margin[~right_top1 & has_top1])
        acceptance = suggest_acceptance(right_pair, wrong_pair, min_precision=min_precision)
        if score_thres is not None:
            current_acceptance = accept_point(right_pair, wrong_pair, score_thres, margin_thres or 0.0)
    return RetrievalReport(
        queries=m,
        answerable=int(answerable.sum()),
        recall={int(k): recall_at_k(rel[answerable], int(k)) for k in ks},
        mean_ap=mean_average_precision(rel[answerable], [int(r) for r, a in zip(n_relevant, answerable) if a]),
        ranked=rel.shape[1],
        right_top1=len(correct),
        wrong_top1=len(wrong),
        suggestion=suggest_score_thres(correct, wrong),
        current=None if score_thres is None else threshold_point(correct, wrong, score_thres),
        acceptance=acceptance,
        current_acceptance=current_acceptance,
        min_precision=min_precision,
        margins_known=margins is not None,
    )
