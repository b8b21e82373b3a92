"""``Kafka.tracks_topic``: where track events go, checked like ``Kafka.topic``."""
from __future__ import annotations

import pytest

from config import ConfigError, load_config


# (overrides, the tracks topic)
TOPICS = [
    ([], "vidrec.results.tracks"),  # the default: <topic>.tracks
    (["Kafka.topic=shop"], "shop.tracks"),  # follows the results' topic
    (["Kafka.topic=shop", "Kafka.tracks_topic=people"], "people"),  # or named on its own
]


@pytest.mark.parametrize(("overrides", "topic"), TOPICS)
def test_the_tracks_topic(overrides: list[str], topic: str) -> None:
    assert load_config(None, overrides).Kafka.tracks_topic_name == topic


# (overrides, what the one-line error names)
REFUSED = [
    (["Kafka.tracks_topic=two words"], "Kafka.tracks_topic: string should match pattern"),  # Kafka's characters only
    (["Kafka.tracks_topic="], "Kafka.tracks_topic"),  # empty is no topic (null is the default)
    ([f"Kafka.topic={'t' * 245}"], "the default " + "t" * 245 + ".tracks is over Kafka's 249 characters"),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSED)
def test_a_bad_tracks_topic_is_refused_in_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        load_config(None, overrides)
    assert message in str(caught.value) and "\n" not in str(caught.value), caught.value
