#!/usr/bin/env bash
# A standalone Flink cluster from the apache-flink wheel's bin/, on loopback,
# configured from flink-conf/ (folders under var/cluster/).
#
#   cluster.sh up [TASKMANAGERS]      JobManager + TaskManagers (default 1), wait until registered
#   cluster.sh submit [FLINK OPTS] [--config F] [--set K=V] [--bootstrap-servers H:P]
#                                     flink run -d --pyModule jobs.rtrec_job (e.g. --set flink.parallelism=2)
#   cluster.sh list                   flink list
#   cluster.sh list-taskmanagers      resource id, slots, free slots
#   cluster.sh stop JOB_ID            stop with a savepoint (printed; resume with submit -s PATH)
#   cluster.sh add-taskmanager        one more TaskManager
#   cluster.sh kill-taskmanager ID    SIGKILL TaskManager ID (tm-1, tm-2, ...): for failure tests
#   cluster.sh down                   stop every process this script started
#
# Environment: FLINK_REST_PORT (8081), TASK_SLOTS (2), RTREC_CLUSTER_DIR (var/cluster).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
FLINK_HOME="$("$PY" -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))')"
CLUSTER_DIR="${RTREC_CLUSTER_DIR:-$ROOT/var/cluster}"
FLINK_REST_PORT="${FLINK_REST_PORT:-8081}"
TASK_SLOTS="${TASK_SLOTS:-2}"
# The cluster's class path: the wheel's lib/ plus flink-python from its opt/ (see `up`).
export FLINK_HOME FLINK_CONF_DIR="$CLUSTER_DIR/conf" FLINK_LOG_DIR="$CLUSTER_DIR/log" FLINK_PID_DIR="$CLUSTER_DIR" \
  FLINK_LIB_DIR="$CLUSTER_DIR/lib"
REST="http://localhost:$FLINK_REST_PORT"

rest_answers() { "$PY" -c "import urllib.request,sys; urllib.request.urlopen('$REST/overview', timeout=2)" 2>/dev/null; }
registered() { "$PY" -c "import json,urllib.request; print(json.load(urllib.request.urlopen('$REST/overview', timeout=2))['taskmanagers'])" 2>/dev/null || echo 0; }
connector() {
  local jar
  jar="$(ls "$ROOT"/deploy/flink/lib/flink-sql-connector-kafka-*.jar 2>/dev/null | head -1)"
  [ -n "$jar" ] || { echo "cluster: no Kafka connector jar in deploy/flink/lib: run make flink-jars" >&2; exit 1; }
  echo "$jar"
}

start_taskmanager() {
  # A resource id we choose, so a TaskManager in the REST API can be found among the processes.
  local n=1
  while [ -e "$CLUSTER_DIR/tm-$n.started" ]; do n=$((n + 1)); done
  touch "$CLUSTER_DIR/tm-$n.started"
  "$FLINK_HOME/bin/taskmanager.sh" start -D "taskmanager.resource-id=tm-$n" >/dev/null
}

wait_for_taskmanagers() {
  for _ in $(seq 1 120); do
    [ "$(registered)" -ge "$1" ] && return 0
    sleep 0.5
  done
  echo "cluster: $1 TaskManager(s) not registered after 60 s; see $FLINK_LOG_DIR" >&2
  exit 1
}

case "${1:-}" in
  up)
    n="${2:-1}"
    if rest_answers; then echo "cluster: already running at $REST"; exit 0; fi
    mkdir -p "$FLINK_LOG_DIR"
    rm -f "$CLUSTER_DIR"/tm-*.started
    "$PY" "$ROOT/deploy/flink/bin/cluster-conf.py" "$FLINK_CONF_DIR" "$FLINK_REST_PORT" "$TASK_SLOTS"
    # flink-python (and pemja in it) on the processes' own class path, as Flink's PyFlink docs
    # have it: shipped with each job instead, pemja loaded its native library in the job's class
    # loader, and a TaskManager that had run one Python job failed the next one (a resume from a
    # savepoint) with NoSuchFieldException: loadedLibraryNames.
    rm -rf "$FLINK_LIB_DIR" && mkdir -p "$FLINK_LIB_DIR"
    ln -s "$FLINK_HOME"/lib/*.jar "$FLINK_HOME"/opt/flink-python-*.jar "$FLINK_LIB_DIR/"
    "$FLINK_HOME/bin/jobmanager.sh" start >/dev/null
    for _ in $(seq 1 "$n"); do start_taskmanager; done
    wait_for_taskmanagers "$n"
    echo "cluster: up at $REST ($n TaskManager(s) x $TASK_SLOTS slots; logs in $FLINK_LOG_DIR)"
    ;;
  submit)
    shift
    # flink run's own options (-s SAVEPOINT, -n, ...) come first; the job's (--config FILE,
    # --set KEY=VALUE, --bootstrap-servers HOST:PORT, as every rtrec command takes them) from
    # the first of those on. The job's are checked here by `rtrec config` before Flink starts,
    # so a mistake is one line naming the setting or the flags, not a Java stack trace.
    flink_args=()
    while [ $# -gt 0 ]; do
      case "$1" in
        --config|--config=*|--set|--set=*|--bootstrap-servers|--bootstrap-servers=*) break ;;
        *) flink_args+=("$1"); shift ;;
      esac
    done
    cd "$ROOT"
    if ! "$PY" -m rtrec.cli config "$@" >/dev/null; then
      echo "cluster: usage: cluster.sh submit [FLINK RUN OPTIONS, e.g. -s SAVEPOINT] [--config FILE]" \
        "[--set KEY=VALUE ...] [--bootstrap-servers HOST:PORT]" >&2
      exit 2
    fi
    # --pyModule: the job's entry point; --pyFiles: the project's packages for the
    # client; --jarfile: the Kafka connector. The TaskManagers run the same code
    # in thread mode from python.pythonpath (see cluster-conf.py).
    "$FLINK_HOME/bin/flink" run -d \
      -pyclientexec "$PY" -pyexec "$PY" \
      ${flink_args[@]+"${flink_args[@]}"} \
      --pyModule jobs.rtrec_job --pyFiles "$ROOT/rtrec,$ROOT/jobs,$ROOT/udfs,$ROOT/models" \
      --jarfile "$(connector)" \
      "$@"
    ;;
  list)
    "$FLINK_HOME/bin/flink" list
    ;;
  list-taskmanagers)
    "$PY" -c "import json,urllib.request
for tm in json.load(urllib.request.urlopen('$REST/taskmanagers', timeout=5))['taskmanagers']:
    print(tm['id'], 'slots', tm['slotsNumber'], 'free', tm['freeSlots'])"
    ;;
  stop)
    [ -n "${2:-}" ] || { echo "usage: cluster.sh stop JOB_ID" >&2; exit 2; }
    "$FLINK_HOME/bin/flink" stop --savepointPath "$CLUSTER_DIR/savepoints" "$2"
    ;;
  add-taskmanager)
    n="$(registered)"
    start_taskmanager
    wait_for_taskmanagers "$((n + 1))"
    echo "cluster: TaskManager added ($((n + 1)) registered)"
    ;;
  kill-taskmanager)
    [ -n "${2:-}" ] || { echo "usage: cluster.sh kill-taskmanager ID (see cluster.sh list-taskmanagers)" >&2; exit 2; }
    # This cluster's TaskManager only (its --configDir): another cluster on the machine has a tm-1 too.
    pid="$(pgrep -f -- "--configDir $FLINK_CONF_DIR .*taskmanager.resource-id=$2( |\$)" | head -1 || true)"
    [ -n "$pid" ] || { echo "cluster: no TaskManager process with resource id $2" >&2; exit 1; }
    kill -9 "$pid"
    echo "cluster: killed TaskManager $2 (pid $pid)"
    ;;
  down)
    "$FLINK_HOME/bin/taskmanager.sh" stop-all >/dev/null 2>&1 || true
    "$FLINK_HOME/bin/jobmanager.sh" stop-all >/dev/null 2>&1 || true
    rm -rf "$CLUSTER_DIR/tmp"  # the processes' temporary files (cluster-conf.py: io.tmp.dirs)
    echo "cluster: stopped"
    ;;
  *)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
