"""How rtrec creates topics: the settings, not constants (the broker side is in tests/integration)."""

import pytest

from rtrec.config import ConfigError, load_config
from rtrec.topics import MODEL_TOPIC_CONFIG, new_topic


def test_topics_are_created_with_the_configured_partitions_and_replication():
    k = load_config(overrides=["kafka.partitions=6", "kafka.replication_factor=3"]).kafka
    for name in (k.events_topic, k.predictions_topic, k.dead_letter_topic):
        t = new_topic(k, name)
        assert (t.topic, t.num_partitions, t.replication_factor) == (name, 6, 3)
    # model-updates keeps one partition (versions in order), compacted, but is replicated like the rest
    t = new_topic(k, k.model_updates_topic)
    assert (t.num_partitions, t.replication_factor, t.config) == (1, 3, MODEL_TOPIC_CONFIG)


def test_defaults_suit_the_single_local_broker():
    k = load_config().kafka
    assert (k.partitions, k.replication_factor, k.create_topics) == (4, 1, True)
    assert new_topic(load_config(overrides=["kafka.replication_factor=-1"]).kafka, "x").replication_factor == -1


@pytest.mark.parametrize("setting", ["kafka.replication_factor=0", "kafka.replication_factor=-2", "kafka.partitions=0"])
def test_impossible_topic_settings_are_refused(setting):
    with pytest.raises(ConfigError, match="kafka.partitions must be at least 1 and kafka.replication_factor"):
        load_config(overrides=[setting])
