import pytest

from rtrec.config import ConfigError, load_config, parse_override


def test_defaults_run_against_the_local_broker():
    cfg = load_config()
    assert cfg.kafka.bootstrap_servers.endswith(":9092") or cfg.kafka.bootstrap_servers  # env may point elsewhere
    assert cfg.flink.delivery_guarantee == "exactly-once"
    assert cfg.flink.parallelism <= cfg.flink.shards


def test_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("flink:\n  parallelism: 2\n  options:\n    taskmanager.memory.process.size: 2g\nmodel:\n  dim: 8\n")
    cfg = load_config(f, ["model.dim=16", "flink.bounded=true", "kafka.events_topic=clicks"])
    assert cfg.flink.parallelism == 2
    assert cfg.flink.options == {"taskmanager.memory.process.size": "2g"}
    assert cfg.model.dim == 16
    assert cfg.flink.bounded is True
    assert cfg.kafka.events_topic == "clicks"


def test_environment_names_the_broker(monkeypatch):
    monkeypatch.setenv("RTREC_BOOTSTRAP_SERVERS", "kafka.example:9093")
    assert load_config().kafka.bootstrap_servers == "kafka.example:9093"


@pytest.mark.parametrize(
    "override, message",
    [
        ("flink.paralelism=2", "unknown setting"),
        ("model.dim=wide", "expected int"),
        ("flink.bounded=maybe", "expected true or false"),
        ("flink.delivery_guarantee=twice", "exactly-once or at-least-once"),
        ("flink.parallelism=64", "exceeds flink.shards"),
        ("nosuchsection.x=1", "unknown setting"),
        ("no-equals-sign", "expected section.key=value"),
    ],
)
def test_bad_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_override_values_are_yaml():
    assert parse_override("a.b=2") == {"a": {"b": 2}}
    assert parse_override("a.b=x:y") == {"a": {"b": "x:y"}}


def test_topic_prefix_renames_every_topic():
    k = load_config().kafka.with_prefix("p.")
    names = [k.events_topic, *k.output_topics()]
    assert all(n.startswith("p.") for n in names) and len(set(names)) == len(names)
