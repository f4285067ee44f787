"""How every Kafka client connects: the one place that turns ``kafka.*`` settings into client properties.

Two families of clients talk to Kafka, and they spell some properties differently:

- the Flink job's Java clients (the SQL source and sinks of jobs/kafka_tables.py) take
  :func:`java_properties`, as ``properties.*`` options (:func:`flink_sql_options`, which also
  renames Kafka classes to the connector's shaded ones);
- rtrec's own confluent-kafka (librdkafka) clients, in replay, serve, eval, demo,
  rtrec/topics.py and the RecordFetcher that loads model versions, take
  :func:`librdkafka_properties`; :func:`producer`, :func:`consumer` and :func:`admin` build them.

===============================  ===========================================  ==============================
setting                          Java                                         librdkafka
===============================  ===========================================  ==============================
security_protocol                security.protocol                            security.protocol (lower case)
sasl_mechanism                   sasl.mechanism                               sasl.mechanism
sasl_username + password         sasl.jaas.config (Plain/ScramLoginModule)    sasl.username, sasl.password
ssl_ca_file (PEM)                ssl.truststore.type=PEM, .location           ssl.ca.location
properties: sasl.jaas.config     as is                                        sasl.username, sasl.password
properties: ssl.truststore.*     as is                                        ssl.ca.location (PEM only)
properties: ssl.endpoint...=""   as is                                        ssl.endpoint...=none
===============================  ===========================================  ==============================

Secrets are never held in the configuration, only where to find them: a reference in Kafka's
config-provider syntax, ``${env:NAME}`` (an environment variable) or ``${dir:/folder:file}``
(a file's whole content, as Kubernetes mounts a Secret). The Java clients resolve references
themselves (EnvVarConfigProvider, DirectoryConfigProvider), so a secret never enters Flink's job
graph, configuration, logs or checkpoints; for librdkafka, :func:`resolve` reads it when a client
is built. Error messages name the setting, never the value.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from rtrec.config import PROJECT_ROOT, ConfigError, KafkaConfig

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}
#: The Kafka classes inside flink-sql-connector-kafka live under this prefix.
FLINK_SHADED = "org.apache.flink.kafka.shaded."
PROVIDERS = {
    "env": "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
    "dir": "org.apache.kafka.common.config.provider.DirectoryConfigProvider",
}
#: ``${env:NAME}`` or ``${dir:/folder:file}`` (Kafka's ConfigTransformer syntax).
REFERENCE = re.compile(r"\$\{(\w+):(?:([^}:]*):)?([^}:]*)\}")
#: Property names whose values are secrets: they must be references.
SENSITIVE = re.compile(r"password|secret|jaas|api\.?key", re.IGNORECASE)
_JAAS = re.compile(r"^\s*(?P<module>[\w.$]+)\s+(?:required|requisite|sufficient|optional)\b(?P<options>.*?);?\s*$",
                   re.DOTALL)
_JAAS_OPTION = re.compile(r'([\w.]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;]+))')
#: Set by the typed settings; also setting them in a properties map would leave two answers.
_TYPED = {
    "bootstrap.servers": "kafka.bootstrap_servers",
    "security.protocol": "kafka.security_protocol",
    "sasl.mechanism": "kafka.sasl_mechanism",
    "sasl.username": "kafka.sasl_username",
    "sasl.password": "kafka.sasl_password_env or kafka.sasl_password_file",
    "ssl.ca.location": "kafka.ssl_ca_file",
}
_MAPS = ("properties", "java_properties", "librdkafka_properties")


# -- checks ------------------------------------------------------------------------------
def validate(k: KafkaConfig) -> None:
    """Reject settings that cannot work, naming them (never their values)."""
    if k.security_protocol not in PROTOCOLS:
        raise ConfigError(f"kafka.security_protocol: expected one of {', '.join(PROTOCOLS)}")
    sasl = k.security_protocol.startswith("SASL_")
    if k.sasl_mechanism and not sasl:
        raise ConfigError("kafka.sasl_mechanism needs kafka.security_protocol SASL_SSL or SASL_PLAINTEXT")
    if sasl and not k.sasl_mechanism:
        raise ConfigError(f"kafka.security_protocol={k.security_protocol} needs kafka.sasl_mechanism "
                          f"({', '.join(LOGIN_MODULES)}, or another one with its properties)")
    if k.sasl_password_env and k.sasl_password_file:
        raise ConfigError("kafka.sasl_password_env and kafka.sasl_password_file: give one of them, not both")
    has_password = bool(k.sasl_password_env or k.sasl_password_file)
    if k.sasl_username or has_password:
        if not (k.sasl_username and has_password):
            raise ConfigError("kafka.sasl_username needs a password (kafka.sasl_password_env or "
                              "kafka.sasl_password_file), and a password needs kafka.sasl_username")
        if k.sasl_mechanism not in LOGIN_MODULES:
            raise ConfigError(f"kafka.sasl_username and password work with kafka.sasl_mechanism "
                              f"{', '.join(LOGIN_MODULES)}; for {k.sasl_mechanism or 'none'} set the mechanism's "
                              "properties (e.g. sasl.jaas.config) in kafka.properties")
        if re.search(r'["\\;]', k.sasl_username):
            raise ConfigError("kafka.sasl_username: quotes, backslashes and semicolons cannot be passed to JAAS")
    if k.sasl_password_env and not re.fullmatch(r"[A-Za-z_]\w*", k.sasl_password_env):
        raise ConfigError("kafka.sasl_password_env: expected the name of an environment variable, e.g. "
                          "RTREC_KAFKA_PASSWORD (the password itself never goes into the configuration)")
    if k.sasl_password_file and re.search(r"[:}]", str(_absolute(k.sasl_password_file))):
        raise ConfigError("kafka.sasl_password_file: the path may not contain ':' or '}'")
    for name in _MAPS:
        for key, value in getattr(k, name).items():
            where = f"kafka.{name}.{key}"
            if key in _TYPED:
                raise ConfigError(f"{where}: set it with {_TYPED[key]}")
            if key == "sasl.jaas.config" and k.sasl_username:
                raise ConfigError(f"{where}: kafka.sasl_username and its password make the JAAS configuration; "
                                  "give one or the other")
            if SENSITIVE.search(key) and not _only_references(key, value):
                raise ConfigError(
                    f"{where}: a secret is never written into the configuration: give it as a reference, "
                    "${env:NAME} (an environment variable) or ${dir:/folder:file} (a file's content)"
                )
            for m in REFERENCE.finditer(value):
                if m.group(1) not in PROVIDERS:
                    raise ConfigError(f"{where}: unknown reference ${{{m.group(1)}:...}}; expected ${{env:NAME}} "
                                      "or ${dir:/folder:file}")


def _only_references(key: str, value: str) -> bool:
    """A sensitive value holds its secrets by reference: all of it, or each password of a JAAS line."""
    if "jaas" in key.lower():
        return all(REFERENCE.fullmatch(v) for k, v in _jaas_options(value).items() if SENSITIVE.search(k))
    return bool(REFERENCE.fullmatch(value.strip()))


# -- the Java clients --------------------------------------------------------------------
def password_reference(k: KafkaConfig) -> str:
    """Where the SASL password is, as a config-provider reference ("" when there is none)."""
    if k.sasl_password_env:
        return f"${{env:{k.sasl_password_env}}}"
    if k.sasl_password_file:
        p = _absolute(k.sasl_password_file)
        return f"${{dir:{p.parent}:{p.name}}}"
    return ""


def java_properties(k: KafkaConfig) -> dict[str, str]:
    """Security and extra properties for Kafka's Java clients (without bootstrap.servers).

    >>> cfg = KafkaConfig(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="rtrec",
    ...                   sasl_password_env="RTREC_KAFKA_PASSWORD", ssl_ca_file="/etc/kafka/ca.pem")
    >>> java_properties(cfg)["sasl.jaas.config"]
    'org.apache.kafka.common.security.scram.ScramLoginModule required username="rtrec" password="${env:RTREC_KAFKA_PASSWORD}";'
    >>> java_properties(cfg)["ssl.truststore.location"], java_properties(cfg)["config.providers"]
    ('/etc/kafka/ca.pem', 'env,dir')
    """
    props: dict[str, str] = {}
    if k.security_protocol != "PLAINTEXT":
        props["security.protocol"] = k.security_protocol
    if k.sasl_mechanism:
        props["sasl.mechanism"] = k.sasl_mechanism
    if k.sasl_username:
        props["sasl.jaas.config"] = (f'{LOGIN_MODULES[k.sasl_mechanism]} required '
                                     f'username="{k.sasl_username}" password="{password_reference(k)}";')
    if k.ssl_ca_file:
        props["ssl.truststore.type"] = "PEM"
        props["ssl.truststore.location"] = str(_absolute(k.ssl_ca_file))
    props.update(k.properties)
    props.update(k.java_properties)
    if any(REFERENCE.search(v) for v in props.values()):
        names = [n for n in props.get("config.providers", "").split(",") if n.strip()]
        props["config.providers"] = ",".join(dict.fromkeys([*names, *PROVIDERS]))
        for name, cls in PROVIDERS.items():
            props.setdefault(f"config.providers.{name}.class", cls)
    return props


def flink_sql_options(k: KafkaConfig) -> dict[str, str]:
    """:func:`java_properties` as options of a Flink SQL Kafka table (``properties.*``).

    flink-sql-connector-kafka relocates the Kafka client, so class names in values (login
    modules, config providers, callback handlers) get the shaded prefix:

    >>> flink_sql_options(KafkaConfig(properties={"sasl.jaas.config":
    ...     'org.apache.kafka.common.security.plain.PlainLoginModule required password="${env:P}";'}))
    ... # doctest: +NORMALIZE_WHITESPACE
    {'properties.sasl.jaas.config': 'org.apache.flink.kafka.shaded.org.apache.kafka.common.security.plain.PlainLoginModule
      required password="${env:P}";', 'properties.config.providers': 'env,dir',
     'properties.config.providers.env.class':
      'org.apache.flink.kafka.shaded.org.apache.kafka.common.config.provider.EnvVarConfigProvider',
     'properties.config.providers.dir.class':
      'org.apache.flink.kafka.shaded.org.apache.kafka.common.config.provider.DirectoryConfigProvider'}
    """
    return {f"properties.{key}": re.sub(r"(?<![\w.])org\.apache\.kafka\.", FLINK_SHADED + "org.apache.kafka.", v)
            for key, v in java_properties(k).items()}


# -- the librdkafka clients --------------------------------------------------------------
def librdkafka_properties(k: KafkaConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Security and extra properties for confluent-kafka clients, secrets resolved (without bootstrap.servers).

    ``environ`` (default ``os.environ``) is where ``${env:...}`` references are looked up.
    """
    environ = os.environ if environ is None else environ
    props: dict[str, str] = {}
    refs: dict[str, str] = {}  # property -> the setting its reference came from, for error messages
    if k.security_protocol != "PLAINTEXT":
        props["security.protocol"] = k.security_protocol.lower()
    if k.sasl_mechanism:
        props["sasl.mechanism"] = k.sasl_mechanism
    if k.sasl_username:
        where = "kafka.sasl_password_env" if k.sasl_password_env else "kafka.sasl_password_file"
        password = resolve(password_reference(k), where, environ)
        if re.search(r'["\\]', password):
            # The Java clients get it inside the quotes of a JAAS line, which cannot carry these.
            raise ConfigError(f"{where}: the password holds a quote or a backslash, which a JAAS line cannot carry")
        props["sasl.username"] = k.sasl_username
        props["sasl.password"] = password_reference(k)
        refs["sasl.password"] = where
    if k.ssl_ca_file:
        props["ssl.ca.location"] = str(_absolute(k.ssl_ca_file))
    for key, value in _translate(k.properties).items():
        props[key] = value
        refs[key] = f"kafka.properties.{key}"
    for key, value in k.librdkafka_properties.items():
        props[key] = value
        refs[key] = f"kafka.librdkafka_properties.{key}"
    return {key: resolve(v, refs.get(key, f"kafka.properties.{key}"), environ) for key, v in props.items()}


def _translate(java: Mapping[str, str]) -> dict[str, str]:
    """Java property names and values -> librdkafka's, for the few that differ.

    >>> _translate({"sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required '
    ...             'username="u" password="${env:P}";', "client.id": "rtrec"})
    {'sasl.username': 'u', 'sasl.password': '${env:P}', 'client.id': 'rtrec'}
    >>> _translate({"ssl.truststore.type": "PEM", "ssl.truststore.location": "/ca.pem",
    ...             "ssl.endpoint.identification.algorithm": ""})
    {'ssl.ca.location': '/ca.pem', 'ssl.endpoint.identification.algorithm': 'none'}
    """
    out: dict[str, str] = {}
    for key, value in java.items():
        if key == "sasl.jaas.config":
            m = _JAAS.match(value)
            module = m.group("module").rsplit(".", 1)[-1] if m else "?"
            options = _jaas_options(value)
            if module not in ("PlainLoginModule", "ScramLoginModule") or not {"username", "password"} <= set(options):
                raise ConfigError(
                    f"kafka.properties.sasl.jaas.config: librdkafka reads only a PlainLoginModule or ScramLoginModule "
                    f"line with username and password, not {module}: give this mechanism's librdkafka settings in "
                    "kafka.librdkafka_properties and the JAAS line in kafka.java_properties"
                )
            out["sasl.username"], out["sasl.password"] = options["username"], options["password"]
        elif key == "ssl.truststore.location":
            if java.get("ssl.truststore.type", "").upper() != "PEM":
                raise ConfigError("kafka.properties.ssl.truststore.location: librdkafka reads CA certificates as "
                                  "PEM only: give a PEM file in kafka.ssl_ca_file (or set ssl.truststore.type: PEM)")
            out["ssl.ca.location"] = value
        elif key == "ssl.truststore.type":
            continue  # PEM, checked with the location
        elif key == "ssl.endpoint.identification.algorithm":
            out[key] = value or "none"
        else:
            out[key] = value
    return out


def _jaas_options(line: str) -> dict[str, str]:
    m = _JAAS.match(line)
    text = m.group("options") if m else line
    return {o[0]: o[1] if o[1] or not o[2] else o[2] for o in _JAAS_OPTION.findall(text)}


def resolve(value: str, where: str, environ: Mapping[str, str] | None = None) -> str:
    """``value`` with its references replaced by the secrets they name. Errors name ``where``, never a secret."""
    environ = os.environ if environ is None else environ

    def secret(m: re.Match) -> str:
        provider, folder, key = m.groups()
        if provider == "env" and not folder:
            found = environ.get(key)
            if not found:
                raise ConfigError(f"{where}: the environment variable {key} is {'empty' if found == '' else 'not set'}"
                                  " (it holds a Kafka secret)")
            return found
        if provider == "dir" and folder:
            path = Path(folder) / key
            try:
                text = path.read_text()
            except OSError as e:
                raise ConfigError(f"{where}: cannot read the secret file {path} ({e.strerror})") from None
            if text.endswith(("\n", "\r")):
                raise ConfigError(f"{where}: {path} ends with a line break, which Kafka's Java clients would read "
                                  "as part of the secret: write the file without one (printf '%s' ...)")
            return text
        raise ConfigError(f"{where}: expected ${{env:NAME}} or ${{dir:/folder:file}}")

    return REFERENCE.sub(secret, value)


def _absolute(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else PROJECT_ROOT / p


# -- building clients --------------------------------------------------------------------
def settings(k: KafkaConfig, **extra) -> dict:
    """The whole librdkafka configuration of a client: broker, security, librdkafka's log through the
    ``rtrec.kafka`` logger (rtrec.topics.KAFKA_LOG), then ``extra``."""
    return {"bootstrap.servers": k.bootstrap_servers, **librdkafka_properties(k),
            "logger": logging.getLogger("rtrec.kafka"), **extra}


def producer(k: KafkaConfig, **extra) -> Producer:
    return _build(Producer, k, extra)


def consumer(k: KafkaConfig, **extra) -> Consumer:
    return _build(Consumer, k, extra)


def admin(k: KafkaConfig, **extra) -> AdminClient:
    return _build(AdminClient, k, extra)


def _build(client: Callable, k: KafkaConfig, extra: dict):
    conf = settings(k, **extra)
    try:
        return client(conf)
    except (KafkaException, ValueError, TypeError) as e:
        # librdkafka names a bad value in its message: keep secrets out of it.
        text = scrub(str(e), [v for key, v in conf.items() if SENSITIVE.search(key) and isinstance(v, str)])
        raise ConfigError(f"Kafka client settings (kafka.properties / kafka.librdkafka_properties): {text}") from None


def scrub(text: str, secrets: list[str]) -> str:
    """``text`` with every secret in ``secrets`` blanked out.

    >>> scrub('Invalid value "hunter2" for "sasl.password"', ["hunter2"])
    'Invalid value "***" for "sasl.password"'
    """
    for s in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(s, "***")
    return text
