"""A track's label: a weighted vote over its recognition attempts (pure; tested with numbers).

Each attempt is the gallery's top-1 answer for one crop of the track, its label and similarity, whatever the
similarity. It votes for that label with the weight

    weight = similarity × sqrt(box area / frame area)

so a clear match of a large view counts more than a doubtful one of a small, distant view (Frigate weighs its
recognition votes by score and area alike; DeepStream keeps the last answer, with no vote).

The rule: the label with the most weight leads; once it has at least ``min_votes`` attempts of its own, it is
the track's answer if its strength, the mean of its ``min_votes`` best similarities, reaches ``score_thres``,
and its lead, the mean of its ``min_votes`` best margins (an attempt's margin: how far its top-1 is above the
best entry of another label, models/shitu.py ``label_margin``), reaches ``margin_thres`` — the per-crop
acceptance rule (``IndexProcess.score_thres`` / ``margin_thres``) asked of the track's best views — and the
track is unnamed if not. Until then the track keeps what it had (unnamed at first), so one lucky or
unlucky crop never names, renames or unnames a track, and a later, stronger vote can change it. The published
``score`` is the answer's strength.

And the leader's attempts that each passed the per-crop rule must be at least ``min_share`` of the track's
attempts. The best views alone are a maximum over many tries: a long track of someone the gallery does not hold
has its top-1 on the nearest gallery item every time (a closed gallery always has a nearest), and sooner or later
two of those pass the rule. The share tells them apart: a true match passes on most of its views, a
look-alike on a few. It is off by default (0): how often a true match passes on one view depends on the gallery
and the thresholds (on the hard set of issue 13 half the known queries pass the default rule), so a share is a
setting for look-alike galleries. On vtest.avi's enrol-and-find scenario (people; docs/benchmarks.md), 0.5 with a
per-crop score of 0.80, chosen together on the tune split, took a person's label off most of the other walkers it
had stuck to (all four people: precision 0.73 → 0.82, recall 0.56 → 0.67, against 0.85 and no share).

Why not threshold each attempt, or the mean of all: with an ImageNet recognizer a true match often scores just
under ``score_thres`` on one crop and well over it on the next. Thresholding each attempt first made those near
misses votes for "unknown" that outweighed the hits (on vtest.avi's enrol-and-find scenario a person named in 29
of 40 frames one by one was never named as a track; docs/benchmarks.md), and the mean of all attempts stays
under the threshold for as long as the early, distant views weigh in. Two good views of the same label are the
evidence a per-frame rule asks of one. An object the gallery does not hold spreads its top-1 over several labels
at low similarity and stays unnamed; a track whose label a new gallery no longer holds is unnamed at once
(``forget_unless``). Memory: one tally per distinct label (its ``min_votes`` best similarities), never a list
of attempts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class VoteRule:
    min_votes: int = 2  # attempts the leading label needs of its own before it names (or unnames) a track
    score_thres: float = 0.5  # the mean similarity that names a track (IndexProcess.score_thres)
    margin_thres: float = 0.0  # the mean margin over other labels that names a track (IndexProcess.margin_thres)
    min_share: float = 0.0  # share of the track's attempts that must each pass the per-crop rule, for the leader

    def __post_init__(self) -> None:
        if self.min_votes < 1:
            raise ValueError(f"min_votes must be >= 1, got {self.min_votes}")
        if not 0.0 <= self.min_share <= 1.0:
            raise ValueError(f"min_share must be within [0, 1], got {self.min_share}")


def attempt_weight(similarity: float, *, box_area: float, frame_area: float) -> float:
    """One attempt's weight: its similarity (floored at 0) × the square root of the box's share of the frame."""
    if frame_area <= 0:
        raise ValueError(f"frame_area must be > 0, got {frame_area}")
    share = min(max(box_area / frame_area, 0.0), 1.0)
    return max(similarity, 0.0) * math.sqrt(share)


@dataclass(slots=True)
class _Tally:
    count: int = 0
    accepted: int = 0  # attempts that each passed the per-crop rule (score and margin)
    weight: float = 0.0
    best: list[float] = field(default_factory=list)  # the best similarities, highest first, at most min_votes
    margins: list[float] = field(default_factory=list)  # the best margins, highest first, at most min_votes

    def add(self, similarity: float, margin: float, weight: float, keep: int, accepted: bool) -> None:
        self.count += 1
        self.accepted += accepted
        self.weight += weight
        for kept, value in ((self.best, similarity), (self.margins, margin)):
            kept.append(value)
            kept.sort(reverse=True)
            del kept[keep:]

    @property
    def strength(self) -> float:
        return sum(self.best) / len(self.best)

    @property
    def lead(self) -> float:
        """The mean of the best margins (``inf`` when one attempt saw no other label within reach)."""
        return sum(self.margins) / len(self.margins)


@dataclass(slots=True)
class Votes:
    """The tallies of one track's attempts and the answer they have settled on."""

    rule: VoteRule = field(default_factory=VoteRule)
    label: str | None = None  # the track's answer (None: unnamed)
    score: float | None = None  # the answer's mean similarity; None when unnamed
    attempts: int = 0
    _tallies: dict[str | None, _Tally] = field(default_factory=dict)

    def add(self, label: str | None, similarity: float, weight: float, margin: float = math.inf) -> bool:
        """Count one attempt (``label`` None: the gallery had no answer at all; ``margin``: its top-1's lead over
        another label, ``inf`` when none was searched); True when the track's label changed (named, renamed or
        unnamed)."""
        rule = self.rule
        passed = label is not None and similarity >= rule.score_thres and margin >= rule.margin_thres
        self._tallies.setdefault(label, _Tally()).add(similarity, margin, weight, rule.min_votes, passed)
        self.attempts += 1
        before = self.label
        leader, best = max(self._tallies.items(), key=lambda item: (item[1].weight, item[1].count))
        if best.count >= self.rule.min_votes:
            named = (leader is not None and best.strength >= rule.score_thres and best.lead >= rule.margin_thres
                     and best.accepted >= rule.min_share * self.tallied)
            self.label = leader if named else None
        mine = self._tallies.get(self.label) if self.label is not None else None
        if self.label is None:
            self.score = None
        elif mine is not None:
            self.score = mine.strength  # same answer; a better view raises it
        return self.label != before

    def unname(self) -> None:
        """Unname the track, tallies kept: another track holds its label (``unique_labels``, models/tracking/
        tracks.py). Its next attempt decides again, as any attempt does."""
        self.label = self.score = None

    def restart(self) -> None:
        """Forget the tallies (a new gallery version) but keep the answer until the new votes settle."""
        self._tallies.clear()

    def forget_unless(self, labels: frozenset[str]) -> bool:
        """Unname the track at once if its label is not among ``labels`` (a new gallery version no longer holds
        it: no result of that version may carry it); True when it was unnamed."""
        if self.label is None or self.label in labels:
            return False
        self.label = self.score = None
        return True

    @property
    def tallied(self) -> int:
        """Attempts counted since the last ``restart`` (``attempts`` counts them all)."""
        return sum(tally.count for tally in self._tallies.values())

    def count(self, label: str | None) -> int:
        tally = self._tallies.get(label)
        return 0 if tally is None else tally.count
