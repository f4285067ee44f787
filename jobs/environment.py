"""Build the Flink execution environment from flink-conf/ and rtrec's configuration."""

from __future__ import annotations

import glob
import os
import socket
import sys
import sysconfig
import threading
from pathlib import Path

import pyflink
import yaml
from py4j.java_gateway import JavaGateway
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


#: Managed memory of rtrec run's MiniCluster (see flink_settings).
MINICLUSTER_MANAGED_MEMORY = "512m"


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
            "python.pythonpath": embedded_pythonpath(),
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
        # It answers the job's state and its checkpoint statistics at most this old (Flink's default: 3 s).
        # A bounded run waits for its sources to finish, then for the checkpoints it asks for, and saw
        # each of these up to 3 s late.
        settings["web.refresh-interval"] = "200 ms"
        # RocksDB's block cache and write buffers live in managed memory, which a MiniCluster sizes at
        # 128 MB unless given a size (it has no process size for config.yaml's managed.fraction to
        # divide). A stream of many users that rarely come back (each event reads its user from
        # RocksDB, not the UserStage's cache) ran at half the speed with it: job_throughput.py
        # --stream sparse, learning, 2.0-2.6k events/s steady against 5.0k with 512 MB, as with the
        # heap (hashmap) backend. A size of the user's (config.yaml, flink.options) wins.
        key = "taskmanager.memory.managed.size"
        if key not in settings and key not in cfg.flink.options:
            settings[key] = MINICLUSTER_MANAGED_MEMORY
    else:
        # A standalone cluster from the wheel keeps flink-python in opt/, not lib/: ship it with the
        # job so the JobManager can load the Python operators' classes (Flink's PyFlink docs have it
        # copied to lib/; an image that does so loads it from there first).
        extra = sorted(Path(pyflink.__file__).parent.glob("opt/flink-python-*.jar"))
        settings["pipeline.jars"] = ";".join([settings["pipeline.jars"], *(j.as_uri() for j in extra)])
    settings.update(cfg.flink.options)
    return settings


def embedded_pythonpath() -> str:
    """The Python operators run inside the JVM (thread mode). That embedded interpreter starts from
    the base Python, so it is told where this virtual environment's packages and the project's code are."""
    return os.pathsep.join([sysconfig.get_paths()["purelib"], str(PROJECT_ROOT)])


def embedded_interpreter(gateway: JavaGateway):
    """A pemja interpreter (Java object) on the JVM's embedded CPython, made as PyFlink's
    EmbeddedPythonEnvironmentManager makes it for thread mode (MULTI_THREAD: every interpreter of the
    process shares its modules; the first one starts CPython, with this executable). Close it after use."""
    config = gateway.jvm.pemja.core.PythonInterpreterConfig
    return gateway.jvm.pemja.core.PythonInterpreter(
        config.newBuilder().setPythonExec(sys.executable).setExcType(config.ExecType.MULTI_THREAD)
        .addPythonPaths(embedded_pythonpath()).build())


def warm_embedded_python(cfg: RtrecConfig) -> threading.Thread:
    """Start, on a background thread, the embedded interpreter of the MiniCluster's TaskManager (in the
    JVM this process started) and run udfs.prewarm.prepare in it: the imports and loading each task
    would otherwise do in INITIALIZING. Join the thread before submitting the job. A failure only
    prints a line: the tasks then import what they need themselves, as they always could."""
    from udfs.prewarm import settings_of

    settings = settings_of(cfg.model.enabled, cfg.text if cfg.model.enabled and cfg.text.enabled else None)

    # A py4j client of its own: the shared one hands its pooled connections, each served by its own
    # JVM thread, to whichever thread asks, and the table planner keeps state in the JVM thread
    # that served the client so far (sharing made the next toDataStream fail in Calcite).
    parameters = get_gateway().gateway_parameters

    def warm() -> None:
        gateway = None
        try:
            gateway = JavaGateway(gateway_parameters=parameters)
            interpreter = embedded_interpreter(gateway)
            try:
                interpreter.exec(f"import udfs.prewarm; udfs.prewarm.prepare('{settings}')")
            finally:
                interpreter.close()
        except Exception as e:  # noqa: BLE001 (an optimisation: the job runs without it)
            print(f"rtrec: could not prepare the TaskManager's Python ahead of the job ({str(e).strip()[:300]}); "
                  "its tasks will import what they need themselves", file=sys.stderr, flush=True)
        finally:
            if gateway is not None:
                gateway.close()

    thread = threading.Thread(target=warm, name="rtrec-prewarm", daemon=True)
    thread.start()
    return thread


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
