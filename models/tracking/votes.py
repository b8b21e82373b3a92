"""A track's label: a weighted vote over its recognition attempts (pure; tested with numbers).

Each attempt is the gallery's top-1 answer for one crop of the track: a label when its similarity reached
``score_thres``, or "unknown" (None) when it did not. It votes for that answer with the weight

    weight = similarity × sqrt(box area / frame area)

so a clear match of a large view counts more than a doubtful one of a small, distant view (Frigate weighs its
face votes by score and area alike; DeepStream keeps the last answer, with no vote). An unknown attempt votes for
None with its (too low) similarity, so a track the gallery does not know is held unnamed, and a track whose
item was removed from the gallery is unnamed again.

The rule: the answer with the most weight wins; it becomes the track's answer once it has at least
``min_votes`` attempts of its own. Until then the track keeps what it had (None at first), so a single lucky
or unlucky crop never names or renames a track, and a later, stronger vote can change it. The published
``score`` is the winner's mean similarity. Memory: one tally per distinct answer, never a list of attempts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class VoteRule:
    min_votes: int = 2  # attempts an answer needs of its own before it names (or unnames) a track

    def __post_init__(self) -> None:
        if self.min_votes < 1:
            raise ValueError(f"min_votes must be >= 1, got {self.min_votes}")


def attempt_weight(similarity: float, *, box_area: float, frame_area: float) -> float:
    """One attempt's weight: its similarity (floored at 0) × the square root of the box's share of the frame."""
    if frame_area <= 0:
        raise ValueError(f"frame_area must be > 0, got {frame_area}")
    share = min(max(box_area / frame_area, 0.0), 1.0)
    return max(similarity, 0.0) * math.sqrt(share)


@dataclass(slots=True)
class _Tally:
    count: int = 0
    weight: float = 0.0
    similarity_sum: float = 0.0


@dataclass(slots=True)
class Votes:
    """The tallies of one track's attempts and the answer they have settled on."""

    rule: VoteRule = field(default_factory=VoteRule)
    label: str | None = None  # the track's answer (None: unnamed)
    score: float | None = None  # the answer's mean similarity; None when unnamed
    attempts: int = 0
    _tallies: dict[str | None, _Tally] = field(default_factory=dict)

    def add(self, label: str | None, similarity: float, weight: float) -> bool:
        """Count one attempt; True when the track's label changed (named, renamed or unnamed)."""
        tally = self._tallies.setdefault(label, _Tally())
        tally.count += 1
        tally.weight += weight
        tally.similarity_sum += similarity
        self.attempts += 1
        before = self.label
        winner, best = max(self._tallies.items(), key=lambda item: (item[1].weight, item[1].count))
        if best.count >= self.rule.min_votes:
            self.label = winner
            self.score = None if winner is None else best.similarity_sum / best.count
        elif self.label is not None and self.label in self._tallies:
            mine = self._tallies[self.label]
            self.score = mine.similarity_sum / mine.count  # same answer, its mean moves
        return self.label != before

    def restart(self) -> None:
        """Forget the tallies (a new gallery version) but keep the answer until the new votes settle."""
        self._tallies.clear()

    @property
    def tallied(self) -> int:
        """Attempts counted since the last ``restart`` (``attempts`` counts them all)."""
        return sum(tally.count for tally in self._tallies.values())

    def count(self, label: str | None) -> int:
        tally = self._tallies.get(label)
        return 0 if tally is None else tally.count
