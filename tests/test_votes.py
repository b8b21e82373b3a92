"""The vote that names a track (models/tracking/votes.py): pure, so checked with numbers."""
from __future__ import annotations

import pytest

from models.tracking import VoteRule, Votes, attempt_weight


@pytest.mark.parametrize(
    "similarity, box_area, frame_area, weight",
    [
        (0.8, 100.0, 10_000.0, 0.8 * 0.1),  # a box of 1 % of the frame weighs sqrt(0.01) = 0.1 of its similarity
        (0.9, 10_000.0, 10_000.0, 0.9),  # the whole frame: the similarity itself
        (-0.3, 2_500.0, 10_000.0, 0.0),  # a negative similarity (IP on raw features) never votes against
        (0.5, 20_000.0, 10_000.0, 0.5),  # a box larger than the frame (not clipped) counts as the frame
        (0.5, 0.0, 10_000.0, 0.0),  # no area, no weight
    ],
)
def test_attempt_weight(similarity: float, box_area: float, frame_area: float, weight: float) -> None:
    assert attempt_weight(similarity, box_area=box_area, frame_area=frame_area) == pytest.approx(weight)


def test_attempt_weight_needs_a_frame() -> None:
    with pytest.raises(ValueError, match="frame_area"):
        attempt_weight(0.9, box_area=1.0, frame_area=0.0)


def run(attempts: list[tuple[str | None, float, float]], min_votes: int = 2) -> list[tuple[str | None, bool]]:
    """Each attempt (label, similarity, weight) → (the track's label after it, whether it changed)."""
    votes = Votes(rule=VoteRule(min_votes=min_votes, score_thres=0.7))
    after = []
    for label, similarity, weight in attempts:
        changed = votes.add(label, similarity, weight)
        after.append((votes.label, changed))
    return after


@pytest.mark.parametrize(
    "min_votes, attempts, expected",
    [
        # one lucky crop does not name a track; the second agreeing one does (mean 0.85 >= 0.7)
        (2, [("alice", 0.9, 0.3), ("alice", 0.8, 0.3)], [(None, False), ("alice", True)]),
        # min_votes 1: the first attempt names it
        (1, [("alice", 0.9, 0.3)], [("alice", True)]),
        # two different labels, one attempt each: nothing settles yet
        (2, [("alice", 0.9, 0.3), ("bob", 0.9, 0.4)], [(None, False), (None, False)]),
        # then bob gets a second attempt and leads: bob
        (2, [("alice", 0.9, 0.3), ("bob", 0.9, 0.4), ("bob", 0.8, 0.2)], [(None, False), (None, False), ("bob", True)]),
        # distant views first (0.50, 0.55), then two good ones: the best two (0.81) name it; the mean of all
        # (0.67) would not have
        (2, [("dana", 0.5, 0.1), ("dana", 0.55, 0.1), ("dana", 0.8, 0.2), ("dana", 0.82, 0.2)],
         [(None, False), (None, False), (None, False), ("dana", True)]),
        # near misses one by one (0.68, 0.69) and a hit (0.78): the best two (0.735) name the track
        (2, [("dana", 0.68, 0.1), ("dana", 0.69, 0.1), ("dana", 0.78, 0.1)], [(None, False), (None, False), ("dana", True)]),
        # named alice; two weaker bob attempts do not outweigh alice's two stronger ones
        (2, [("alice", 0.9, 0.5), ("alice", 0.9, 0.5), ("bob", 0.8, 0.2), ("bob", 0.8, 0.2)],
         [(None, False), ("alice", True), ("alice", False), ("alice", False)]),
        # ...but a later, stronger vote renames it
        (2, [("alice", 0.9, 0.2), ("alice", 0.9, 0.2), ("bob", 0.9, 0.5), ("bob", 0.9, 0.5)],
         [(None, False), ("alice", True), ("alice", False), ("bob", True)]),
        # an object the gallery does not hold: its top-1 wanders at low similarity, it stays unnamed
        (2, [("alice", 0.4, 0.1), ("bob", 0.5, 0.1), ("alice", 0.45, 0.1), ("carol", 0.6, 0.1)],
         [(None, False), (None, False), (None, False), (None, False)]),
        # named, then a leading label whose mean stays under the threshold: unnamed again (its item left the gallery)
        (2, [("alice", 0.8, 0.1), ("alice", 0.8, 0.1), ("bob", 0.5, 0.2), ("bob", 0.5, 0.2)],
         [(None, False), ("alice", True), ("alice", False), (None, True)]),
        # no answer at all from the gallery (an empty gallery) never names a track
        (2, [(None, 0.0, 0.0), (None, 0.0, 0.0)], [(None, False), (None, False)]),
    ],
)
def test_the_vote(min_votes: int, attempts: list, expected: list) -> None:
    assert run(attempts, min_votes=min_votes) == expected


@pytest.mark.parametrize(
    "attempts, expected",
    [
        # two clear answers (similar enough, and 0.2 / 0.3 above any other label): named
        ([("alice", 0.9, 0.2), ("alice", 0.8, 0.3)], [None, "alice"]),
        # similar enough, but another label is always close behind (mean lead 0.05 < 0.1): unnamed, as per crop
        ([("alice", 0.9, 0.04), ("alice", 0.8, 0.06)], [None, None]),
        # one close call and one clear view: the mean of the best two leads (0.11) is enough
        ([("alice", 0.9, 0.04), ("alice", 0.8, 0.18)], [None, "alice"]),
        # the best leads count, not the latest: a third close call does not unname the track
        ([("alice", 0.9, 0.2), ("alice", 0.8, 0.3), ("alice", 0.85, 0.01)], [None, "alice", "alice"]),
        # no other label within the searched hits (inf): the lead never blocks
        ([("alice", 0.9, float("inf")), ("alice", 0.8, 0.0)], [None, "alice"]),
    ],
)
def test_the_vote_asks_the_margin_of_the_best_views(attempts: list, expected: list) -> None:
    votes = Votes(rule=VoteRule(min_votes=2, score_thres=0.7, margin_thres=0.1))
    after = []
    for label, similarity, margin in attempts:
        votes.add(label, similarity, 0.3, margin)
        after.append(votes.label)
    assert after == expected


def test_score_is_the_answers_strength_and_restart_keeps_the_answer() -> None:
    votes = Votes(rule=VoteRule(min_votes=2, score_thres=0.7))
    votes.add("alice", 0.9, 0.3)
    votes.add("alice", 0.7, 0.3)
    assert (votes.label, votes.score, votes.attempts, votes.tallied) == ("alice", pytest.approx(0.8), 2, 2)
    votes.restart()  # a new gallery version: the tallies go, the answer stands until new votes settle
    assert (votes.label, votes.score, votes.attempts, votes.tallied) == ("alice", pytest.approx(0.8), 2, 0)
    assert not votes.add("bob", 0.95, 0.9)  # one vote is not enough to rename
    assert votes.label == "alice" and votes.count("bob") == 1 and votes.count("alice") == 0
    assert votes.add("bob", 0.85, 0.9)
    assert (votes.label, votes.score) == ("bob", pytest.approx(0.9))
    assert not votes.add("bob", 0.99, 0.9)  # a better view raises the score: the mean of the best two
    assert votes.score == pytest.approx(0.97)


def test_min_votes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="min_votes"):
        VoteRule(min_votes=0)


@pytest.mark.parametrize(
    "attempts, expected",
    [
        # a true match: its views pass one after another (2 of 2, then 3 of 3): named as without the share
        ([("alice", 0.9, 0.2), ("alice", 0.8, 0.3), ("alice", 0.85, 0.2)], [None, "alice", "alice"]),
        # a look-alike: its nearest item is alice every time, but at most 2 of its views pass (1 of 3, 2 of 5, 2 of 6,
        # all under half): never named, though from the 3rd view on its best two (0.76, then 0.85) would name it
        ([("alice", 0.6, 0.2), ("alice", 0.62, 0.2), ("alice", 0.9, 0.2), ("alice", 0.6, 0.2), ("alice", 0.8, 0.2),
          ("alice", 0.61, 0.2)], [None, None, None, None, None, None]),
        # named on two passing views; failing ones follow: 2 of 4 still hold it, 2 of 5 do not
        ([("alice", 0.9, 0.2), ("alice", 0.8, 0.2), ("alice", 0.6, 0.2), ("alice", 0.6, 0.2), ("alice", 0.6, 0.2)],
         [None, "alice", "alice", "alice", None]),
        # a view that scores but is not clear of another label (margin 0.05 < 0.1) does not pass either
        ([("alice", 0.9, 0.05), ("alice", 0.9, 0.05), ("alice", 0.9, 0.2)], [None, None, None]),
        # attempts with no answer at all count in the track's attempts: 2 passing of 5 (0.4) do not name it
        ([(None, 0.0, 0.0), (None, 0.0, 0.0), ("alice", 0.9, 0.2), ("alice", 0.8, 0.2), (None, 0.0, 0.0)],
         [None, None, None, None, None]),
    ],
)
def test_the_leader_must_pass_on_a_share_of_the_views(attempts: list, expected: list) -> None:
    votes = Votes(rule=VoteRule(min_votes=2, score_thres=0.7, margin_thres=0.1, min_share=0.5))
    after = []
    for label, similarity, margin in attempts:
        votes.add(label, similarity, 0.3, margin)
        after.append(votes.label)
    assert after == expected


@pytest.mark.parametrize("min_share", [-0.1, 1.5])
def test_min_share_is_a_share(min_share: float) -> None:
    with pytest.raises(ValueError, match="min_share"):
        VoteRule(min_votes=2, min_share=min_share)
