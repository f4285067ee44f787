"""Kafka client properties: one configuration, translated for the Java and the librdkafka clients, secrets kept out."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from rtrec import kafka_clients
from rtrec.config import ConfigError, KafkaConfig, load_config

SECRET = "s3cr3t-Pa55"
ROOT = Path(__file__).resolve().parent.parent
SCRAM = ["kafka.security_protocol=SASL_SSL", "kafka.sasl_mechanism=SCRAM-SHA-512", "kafka.sasl_username=rtrec",
         "kafka.sasl_password_env=RTREC_KAFKA_PASSWORD", "kafka.ssl_ca_file=/etc/rtrec/ca.pem"]


def scram(**extra) -> KafkaConfig:
    return load_config(overrides=SCRAM + [f"kafka.{k}={v}" for k, v in extra.items()]).kafka


def test_java_clients_get_a_jaas_line_with_a_password_reference_and_a_pem_truststore():
    props = kafka_clients.java_properties(scram())
    assert props == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required '
                            'username="rtrec" password="${env:RTREC_KAFKA_PASSWORD}";',
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": "/etc/rtrec/ca.pem",
        "config.providers": "env,dir",
        "config.providers.env.class": "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
        "config.providers.dir.class": "org.apache.kafka.common.config.provider.DirectoryConfigProvider",
    }


def test_librdkafka_clients_get_their_own_names_and_the_resolved_password():
    props = kafka_clients.librdkafka_properties(scram(), environ={"RTREC_KAFKA_PASSWORD": SECRET})
    assert props == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "rtrec",
        "sasl.password": SECRET,
        "ssl.ca.location": "/etc/rtrec/ca.pem",
    }


def test_plain_uses_the_plain_login_module():
    k = load_config(overrides=["kafka.security_protocol=SASL_PLAINTEXT", "kafka.sasl_mechanism=PLAIN",
                               "kafka.sasl_username=u", "kafka.sasl_password_env=P"]).kafka
    assert kafka_clients.java_properties(k)["sasl.jaas.config"].startswith(
        "org.apache.kafka.common.security.plain.PlainLoginModule required")


def test_plaintext_defaults_add_nothing():
    k = KafkaConfig()
    assert kafka_clients.java_properties(k) == {} == kafka_clients.librdkafka_properties(k, environ={})


def test_flink_sql_tables_get_the_shaded_class_names():
    opts = kafka_clients.flink_sql_options(scram())
    assert opts["properties.security.protocol"] == "SASL_SSL"
    assert opts["properties.sasl.jaas.config"].startswith(
        "org.apache.flink.kafka.shaded.org.apache.kafka.common.security.scram.ScramLoginModule required ")
    assert opts["properties.config.providers.env.class"] == (
        "org.apache.flink.kafka.shaded.org.apache.kafka.common.config.provider.EnvVarConfigProvider")
    # and the connector jar really has these classes under that prefix
    jar = next((ROOT / "deploy" / "flink" / "lib").glob("flink-sql-connector-kafka-*.jar"), None)
    if jar is not None:
        import zipfile

        names = set(zipfile.ZipFile(jar).namelist())
        for key in ("properties.config.providers.env.class", "properties.config.providers.dir.class"):
            assert opts[key].replace(".", "/") + ".class" in names
        module = opts["properties.sasl.jaas.config"].split()[0]
        assert module.replace(".", "/") + ".class" in names


def test_password_file_is_a_directory_reference_for_java_and_read_for_librdkafka(tmp_path):
    f = tmp_path / "password"
    f.write_text(SECRET)
    k = load_config(overrides=SCRAM[:3] + [f"kafka.sasl_password_file={f}"]).kafka
    assert f'password="${{dir:{tmp_path}:password}}"' in kafka_clients.java_properties(k)["sasl.jaas.config"]
    assert kafka_clients.librdkafka_properties(k)["sasl.password"] == SECRET
    f.write_text(SECRET + "\n")
    with pytest.raises(ConfigError, match="kafka.sasl_password_file: .* line break") as e:
        kafka_clients.librdkafka_properties(k)
    assert SECRET not in str(e.value)
    f.unlink()
    with pytest.raises(ConfigError, match="kafka.sasl_password_file: cannot read the secret file"):
        kafka_clients.librdkafka_properties(k)


def test_a_missing_password_variable_is_named():
    with pytest.raises(ConfigError, match=r"kafka.sasl_password_env: the environment variable RTREC_KAFKA_PASSWORD is not set"):
        kafka_clients.librdkafka_properties(scram(), environ={})
    with pytest.raises(ConfigError, match="is empty"):
        kafka_clients.librdkafka_properties(scram(), environ={"RTREC_KAFKA_PASSWORD": ""})


def test_free_form_properties_are_translated_for_librdkafka():
    k = KafkaConfig(
        security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
        properties={
            "sasl.jaas.config": 'org.apache.kafka.common.security.plain.PlainLoginModule required '
                                'username="svc" password="${env:KPW}";',
            "ssl.truststore.type": "PEM", "ssl.truststore.location": "/ca.pem",
            "ssl.endpoint.identification.algorithm": "",
            "client.id": "rtrec-1",
        },
        java_properties={"sasl.login.refresh.buffer.seconds": "300"},
        librdkafka_properties={"socket.keepalive.enable": "true"},
    )
    kafka_clients.validate(k)
    lib = kafka_clients.librdkafka_properties(k, environ={"KPW": SECRET})
    assert lib == {"security.protocol": "sasl_ssl", "sasl.mechanism": "PLAIN", "sasl.username": "svc",
                   "sasl.password": SECRET, "ssl.ca.location": "/ca.pem",
                   "ssl.endpoint.identification.algorithm": "none", "client.id": "rtrec-1",
                   "socket.keepalive.enable": "true"}
    java = kafka_clients.java_properties(k)
    assert java["sasl.jaas.config"] == k.properties["sasl.jaas.config"]
    assert java["ssl.truststore.location"] == "/ca.pem" and java["sasl.login.refresh.buffer.seconds"] == "300"
    assert "socket.keepalive.enable" not in java and "sasl.login.refresh.buffer.seconds" not in lib


def test_what_librdkafka_cannot_read_is_named():
    jks = KafkaConfig(security_protocol="SSL", properties={"ssl.truststore.location": "/ts.jks",
                                                          "ssl.truststore.password": "${env:TSPW}"})
    with pytest.raises(ConfigError, match="ssl.truststore.location: librdkafka reads CA certificates as PEM only"):
        kafka_clients.librdkafka_properties(jks, environ={"TSPW": "x"})
    oauth = KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", properties={
        "sasl.jaas.config": "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"})
    with pytest.raises(ConfigError, match="OAuthBearerLoginModule"):
        kafka_clients.librdkafka_properties(oauth, environ={})


@pytest.mark.parametrize("key, value", [
    ("sasl.jaas.config", f'org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="{SECRET}";'),
    ("ssl.key.password", SECRET),
    ("sasl.oauthbearer.client.secret", SECRET),
])
def test_a_secret_written_into_the_configuration_is_refused_without_repeating_it(tmp_path, key, value):
    with pytest.raises(ConfigError, match=re.escape(f"kafka.properties.{key}: a secret is never written")) as e:
        load_config(overrides=[f"kafka.properties.{key}={value}"])
    assert SECRET not in str(e.value)
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"kafka": {"librdkafka_properties": {key: value}}}))
    with pytest.raises(ConfigError, match="a secret is never written") as e:
        load_config(f)
    assert SECRET not in str(e.value)


@pytest.mark.parametrize("overrides, message", [
    (["kafka.security_protocol=TLS"], "expected one of PLAINTEXT, SSL"),
    (["kafka.security_protocol=SASL_SSL"], "needs kafka.sasl_mechanism"),
    (["kafka.sasl_mechanism=PLAIN"], "needs kafka.security_protocol SASL_SSL"),
    (SCRAM[:3], "kafka.sasl_username needs a password"),
    (SCRAM + ["kafka.sasl_password_file=/p"], "give one of them, not both"),
    (SCRAM[:2] + SCRAM[3:], "a password needs kafka.sasl_username"),
    (SCRAM[:3] + ["kafka.sasl_password_env=hunter2!"], "expected the name of an environment variable"),
    (SCRAM + ["kafka.properties.security.protocol=SSL"], "set it with kafka.security_protocol"),
    (SCRAM + ["kafka.librdkafka_properties.sasl.password=${env:X}"], "set it with kafka.sasl_password_env"),
    (["kafka.properties.ssl.key.password=${vault:x}"], "unknown reference"),
])
def test_bad_security_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=overrides)


def test_the_configuration_never_holds_the_secret(monkeypatch, tmp_path):
    from jobs.environment import flink_settings

    monkeypatch.setenv("RTREC_KAFKA_PASSWORD", SECRET)
    cfg = load_config(overrides=[*SCRAM, f"flink.checkpoint_dir={tmp_path / 'checkpoints'}"])
    for text in (repr(cfg), str(cfg), yaml.safe_dump(cfg.to_dict()), repr(kafka_clients.java_properties(cfg.kafka)),
                 repr(kafka_clients.flink_sql_options(cfg.kafka)), repr(flink_settings(cfg))):
        assert SECRET not in text
    assert kafka_clients.librdkafka_properties(cfg.kafka)["sasl.password"] == SECRET  # resolved only here


def test_client_construction_errors_hide_secrets(monkeypatch):
    monkeypatch.setenv("KEYPW", SECRET)
    k = KafkaConfig(librdkafka_properties={"ssl.key.password": "${env:KEYPW}", "no.such.property": "1"})
    with pytest.raises(ConfigError, match="no.such.property") as e:
        kafka_clients.consumer(k, **{"group.id": "g"})
    assert SECRET not in str(e.value)


def test_dotted_property_names_from_the_command_line_add_to_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("kafka:\n  properties:\n    client.id: from-file\n    linger.ms: 5\n")
    cfg = load_config(f, ["kafka.properties.client.id=from-cli"])
    assert cfg.kafka.properties == {"client.id": "from-cli", "linger.ms": "5"}


def test_every_confluent_client_gets_the_security_settings(monkeypatch):
    """Each client rtrec builds, through the one builder: replay, topics (eval, demo), serve, the RecordFetcher."""
    from rtrec import replay, serve, topics

    made = []
    for name in ("Producer", "Consumer", "AdminClient"):
        monkeypatch.setattr(kafka_clients, name, lambda conf, name=name: made.append((name, conf)) or object())
    monkeypatch.setenv("RTREC_KAFKA_PASSWORD", SECRET)
    cfg = load_config(overrides=SCRAM)
    replay.producer(cfg.kafka)
    topics.admin(cfg.kafka)
    topics._consumer(cfg.kafka)
    topics.RecordFetcher(cfg.kafka, "t").consumer()
    serve._consumer(cfg)
    assert [n for n, _ in made] == ["Producer", "AdminClient", "Consumer", "Consumer", "Consumer"]
    for _, conf in made:
        assert conf["sasl.password"] == SECRET and conf["security.protocol"] == "sasl_ssl"
        assert conf["ssl.ca.location"] == "/etc/rtrec/ca.pem"


def test_no_client_is_built_outside_the_builder():
    """A new Producer/Consumer/AdminClient elsewhere would miss the security settings."""
    offenders = []
    for folder in ("rtrec", "udfs", "models", "jobs"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "kafka_clients.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"\b(Producer|Consumer|AdminClient)\(", line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert not offenders, f"build Kafka clients with rtrec.kafka_clients: {offenders}"


def test_every_flink_kafka_table_gets_the_security_settings():
    from jobs import kafka_tables

    class TableEnv:
        def __init__(self):
            self.ddl = []

        def execute_sql(self, sql):
            self.ddl.append(sql)

        def sql_query(self, _sql):
            return None

        def create_temporary_view(self, *_):
            pass

    cfg = load_config(overrides=SCRAM)
    t_env = TableEnv()
    kafka_tables.event_batches(t_env, cfg)
    kafka_tables.register_sinks(t_env, cfg)
    kafka_tables.model_updates_source(t_env, cfg, 0)
    kafka_tables.register_model_updates_sink(t_env, cfg)
    tables = [d for d in t_env.ddl if "'connector' = 'kafka'" in d]
    assert len(tables) == 7  # events, 3 outputs, dead letters, model updates in and out
    for ddl in tables:
        assert "'properties.security.protocol' = 'SASL_SSL'" in ddl
        assert "'properties.sasl.mechanism' = 'SCRAM-SHA-512'" in ddl
        assert "password=\"${env:RTREC_KAFKA_PASSWORD}\"" in ddl
        assert "'properties.ssl.truststore.location' = '/etc/rtrec/ca.pem'" in ddl
