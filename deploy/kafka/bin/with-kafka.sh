#!/usr/bin/env bash
# Run a command with a broker on 127.0.0.1:$KAFKA_PORT: start one if none
# answers, and stop (and with --clean, delete) only the one this script started.
#   deploy/kafka/bin/with-kafka.sh [--clean] COMMAND [ARGS...]
set -uo pipefail
source "$(dirname "$0")/env.sh"
clean=""
if [ "${1:-}" = "--clean" ]; then clean="--clean"; shift; fi
started=0
if ! kafka_answers; then
  "$KAFKA_HOME/bin/kafka-up.sh" || exit 1
  started=1
fi
stop() { if [ "$started" = 1 ]; then "$KAFKA_HOME/bin/kafka-down.sh" $clean; fi; }
trap stop EXIT
trap 'exit 130' INT TERM
export RTREC_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
"$@"
