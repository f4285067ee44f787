#!/usr/bin/env bash
# Stop the broker started by kafka-up.sh; --clean also deletes its data.
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [ -f "$KAFKA_PID_FILE" ]; then
  pid="$(cat "$KAFKA_PID_FILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    echo "kafka: stopped (pid $pid)"
  fi
  rm -f "$KAFKA_PID_FILE"
fi
if [ "${1:-}" = "--clean" ]; then rm -rf "$KAFKA_DATA"; echo "kafka: removed $KAFKA_DATA"; fi
