"""Write the standalone cluster's FLINK_CONF_DIR: flink-conf/config.yaml plus loopback, ports and folders.

    python deploy/flink/bin/cluster-conf.py OUT_DIR REST_PORT TASK_SLOTS
"""

import shutil
import sys
import sysconfig
from pathlib import Path

import yaml

root = Path(__file__).resolve().parents[3]
out, rest_port, slots = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
var = out.parent
conf = yaml.safe_load((root / "flink-conf" / "config.yaml").read_text()) or {}
flink_home = Path(sysconfig.get_paths()["purelib"]) / "pyflink"


def put(dotted: str, value) -> None:
    """Set a dotted key, replacing any nested spelling of it."""
    node = conf
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


# The wheel's own JVM options (--add-opens for Java 17), which every Flink process and the CLI need.
wheel_conf = yaml.safe_load((flink_home / "conf" / "config.yaml").read_text()) or {}
java_opts = ((wheel_conf.get("env") or {}).get("java") or {}).get("opts") or {}

# The processes' temporary files (working directories, BLOBs, the RPC jar, JAAS files, the web
# upload folder, the client's Python files) under the cluster's folder, which `cluster.sh down` removes;
# in /tmp they outlived the cluster (about 45 MB a run).
tmp = var / "tmp"
tmp.mkdir(parents=True, exist_ok=True)

for key, value in {
    "env.java.opts.all": f"{java_opts.get('all', '')} -Djava.io.tmpdir={tmp}".strip(),
    "io.tmp.dirs": str(tmp),
    "web.tmpdir": str(tmp),
    # Everything on loopback: nothing listens beyond this machine.
    "jobmanager.rpc.address": "localhost",
    "jobmanager.bind-host": "localhost",
    "taskmanager.bind-host": "localhost",
    "taskmanager.host": "localhost",
    "rest.address": "localhost",
    "rest.bind-address": "localhost",
    "rest.port": rest_port,
    "jobmanager.memory.process.size": "1200m",
    "taskmanager.memory.process.size": "2560m",
    "taskmanager.numberOfTaskSlots": slots,
    # pemja's classes come from flink-python in the cluster's lib/ (cluster.sh) even when a job ships
    # the jar too, so its native library is loaded once per TaskManager, not once per job.
    "classloader.parent-first-patterns.additional": "pemja.",
    # Spread a job's slots over the TaskManagers instead of filling the first one: each TaskManager is
    # a JVM with its own Python interpreter (thread mode), so this is what spreads the Python work.
    "taskmanager.load-balance.mode": "slots",
    # Notice a killed TaskManager within seconds (defaults: 10 s interval, 50 s timeout).
    "heartbeat.interval": 2000,
    "heartbeat.timeout": 15000,
    "execution.checkpointing.dir": (var / "checkpoints").as_uri(),
    "state.checkpoints.dir": (var / "checkpoints").as_uri(),
    "state.savepoints.dir": (var / "savepoints").as_uri(),
    # Prometheus scrapes each process here (the reporter is in the wheel's
    # plugins/metrics-prometheus): the JobManager takes the first free port.
    "metrics.reporter.prom.factory.class": "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
    "metrics.reporter.prom.port": "9249-9269",
    # The Python operators run in the TaskManagers (thread mode) with this
    # project's virtual environment and code.
    "python.executable": sys.executable,
    "python.client.executable": sys.executable,
    "python.pythonpath": f"{sysconfig.get_paths()['purelib']}:{root}",
}.items():
    put(key, value)
out.mkdir(parents=True, exist_ok=True)
(out / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
for name in ("log4j.properties", "log4j-cli.properties", "log4j-console.properties", "logback.xml"):
    shutil.copy(flink_home / "conf" / name, out / name)
