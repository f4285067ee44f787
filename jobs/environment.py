"""Build the Flink execution environment from flink-conf/ and rtrec's configuration."""

from __future__ import annotations

import glob
import os
import socket
import sys
import sysconfig
from pathlib import Path

import pyflink
import yaml
from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway
from pyflink.table import EnvironmentSettings, StreamTableEnvironment

from rtrec.config import PROJECT_ROOT, RtrecConfig

CONNECTOR_DIR = PROJECT_ROOT / "deploy" / "flink" / "lib"
CONNECTOR_HINT = "fetch it with `make flink-jars` (mvn -f deploy/flink/pom.xml dependency:copy-dependencies)"


class SetupError(RuntimeError):
    """Something the job needs before it can start is missing."""


def connector_jars() -> list[Path]:
    jars = sorted(Path(p) for p in glob.glob(str(CONNECTOR_DIR / "flink-sql-connector-kafka-*.jar")))
    if not jars:
        raise SetupError(f"the Flink Kafka connector jar is not in {CONNECTOR_DIR}; {CONNECTOR_HINT}")
    return jars


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested Flink 2.x YAML -> dotted keys, as Configuration wants them."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, bool):
            flat[name] = "true" if value else "false"
        elif isinstance(value, list):
            flat[name] = ";".join(str(v) for v in value)
        else:
            flat[name] = str(value)
    return flat


def flink_settings(cfg: RtrecConfig, local: bool = True) -> dict[str, str]:
    """flink-conf/config.yaml with the job's own settings laid over it.

    ``local``: a MiniCluster in this process (rtrec run), which serves its REST
    API on flink.rest_port; submitted to a cluster (flink run) the client's
    own configuration says where the cluster is, and the job must not move it.
    """
    settings: dict[str, str] = {}
    conf_file = cfg.resolve_path(cfg.flink.conf_dir) / "config.yaml"
    if conf_file.exists():
        settings.update(flatten(yaml.safe_load(conf_file.read_text()) or {}))
    if "://" in cfg.flink.checkpoint_dir:  # s3://, hdfs://, file://: a cluster's shared storage, as given
        checkpoints_uri = cfg.flink.checkpoint_dir.rstrip("/")
        savepoints_uri = checkpoints_uri.rsplit("/", 1)[0] + "/savepoints"
    else:
        checkpoints = cfg.resolve_path(cfg.flink.checkpoint_dir)
        checkpoints.mkdir(parents=True, exist_ok=True)
        checkpoints_uri, savepoints_uri = checkpoints.as_uri(), (checkpoints.parent / "savepoints").as_uri()
    # The Python operators run inside the JVM (thread mode). That embedded
    # interpreter starts from the base Python, so it is told where this virtual
    # environment's packages and the project's code are.
    pythonpath = [sysconfig.get_paths()["purelib"], str(PROJECT_ROOT)]
    settings.update(
        {
            "pipeline.name": cfg.flink.job_name,
            "pipeline.jars": ";".join(p.as_uri() for p in connector_jars()),
            "parallelism.default": str(cfg.flink.parallelism),
            "execution.checkpointing.interval": f"{cfg.flink.checkpoint_interval_ms} ms",
            "execution.checkpointing.dir": checkpoints_uri,
            "state.checkpoints.dir": checkpoints_uri,
            "state.savepoints.dir": savepoints_uri,
            "python.executable": sys.executable,
            "python.client.executable": sys.executable,
            "python.pythonpath": os.pathsep.join(pythonpath),
            # Record timestamps become epoch milliseconds in SQL; pin the zone.
            "table.local-time-zone": "UTC",
            # Watermarks as often as batches (Flink's default: every 200 ms): with a shorter batch
            # interval, batches would otherwise reach the stages ahead of the watermark that follows
            # them, and an event far behind it could be taken in instead of dead-lettered as late.
            "pipeline.auto-watermark-interval": f"{cfg.flink.batch_interval_ms} ms",
        }
    )
    if local:
        settings["rest.port"] = str(cfg.flink.rest_port)
        # The REST API answers metrics it fetched from the tasks at most this long ago (Flink's default:
        # 10 s). rtrec's progress bar samples every 2 s; with 10 s it showed 0 ev/s four times in five.
        settings["metrics.fetcher.update-interval"] = "1 s"
    else:
        # A standalone cluster from the wheel keeps flink-python in opt/, not lib/: ship it with the
        # job so the JobManager can load the Python operators' classes (Flink's PyFlink docs have it
        # copied to lib/; an image that does so loads it from there first).
        extra = sorted(Path(pyflink.__file__).parent.glob("opt/flink-python-*.jar"))
        settings["pipeline.jars"] = ";".join([settings["pipeline.jars"], *(j.as_uri() for j in extra)])
    settings.update(cfg.flink.options)
    return settings


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def choose_rest_port(cfg: RtrecConfig) -> int:
    """The configured REST port, or a free one if it is 0 or taken (another job's web UI, say)."""
    port = cfg.flink.rest_port
    if port and _port_free(port):
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    cfg.flink.rest_port = free
    return free


def create_environments(cfg: RtrecConfig, local: bool = True) -> tuple[StreamExecutionEnvironment, StreamTableEnvironment]:
    if local:
        # The JVM first: its py4j gateway takes a free port of its own, which a REST port chosen
        # before it could be (seen: the MiniCluster's REST endpoint failed to bind, and the REST
        # client's requests reached the gateway).
        get_gateway()
        choose_rest_port(cfg)
    conf = Configuration()
    for key, value in flink_settings(cfg, local).items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(cfg.flink.parallelism)
    t_env = StreamTableEnvironment.create(env, EnvironmentSettings.in_streaming_mode())
    return env, t_env
