#!/usr/bin/env bash
# Start a single-node KRaft broker on 127.0.0.1:$KAFKA_PORT in the background;
# with KAFKA_SASL_PORT set, also a SASL_SSL listener with SCRAM users and ACLs (secure.sh).
# Idempotent: does nothing if a broker already answers on that port.
set -euo pipefail
source "$(dirname "$0")/env.sh"
if kafka_answers; then echo "kafka: already answering on 127.0.0.1:$KAFKA_PORT"; exit 0; fi
"$KAFKA_HOME/bin/kafka-fetch.sh"
mkdir -p "$KAFKA_DATA"
# Render the config with this port and data folder.
sed -e "s#\${KAFKA_PORT}#$KAFKA_PORT#g" -e "s#\${CONTROLLER_PORT}#$CONTROLLER_PORT#g" \
    -e "s#\${KAFKA_DATA}#$KAFKA_DATA#g" "$KAFKA_HOME/server.properties" > "$KAFKA_DATA/server.properties"
FORMAT_ARGS=()
if [ -n "${KAFKA_SASL_PORT:-}" ]; then  # a SASL_SSL listener too: see secure.sh
  source "$KAFKA_HOME/bin/secure.sh"
  secure_init
  secure_properties >> "$KAFKA_DATA/server.properties"
  mapfile -t FORMAT_ARGS < <(secure_format_args)
fi
cat > "$KAFKA_DATA/log4j2.properties" <<LOG
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = $KAFKA_DATA/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
logger.kafka.name = kafka
logger.kafka.level = INFO
LOG
JAVA_OPTS=(-Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
           "-Dlog4j2.configurationFile=$KAFKA_DATA/log4j2.properties")
if [ ! -f "$KAFKA_DATA/logs/meta.properties" ]; then
  java "${JAVA_OPTS[@]}" -cp "$KAFKA_CLASSPATH" kafka.tools.StorageTool format \
       -t "$(java -cp "$KAFKA_CLASSPATH" kafka.tools.StorageTool random-uuid)" \
       -c "$KAFKA_DATA/server.properties" "${FORMAT_ARGS[@]}" >"$KAFKA_DATA/format.log" 2>&1 \
    || { cat "$KAFKA_DATA/format.log" >&2; exit 1; }
fi
nohup java "${JAVA_OPTS[@]}" -cp "$KAFKA_CLASSPATH" kafka.Kafka "$KAFKA_DATA/server.properties" \
      >"$KAFKA_DATA/stdout.log" 2>&1 &
echo $! > "$KAFKA_PID_FILE"
for _ in $(seq 1 120); do
  if kafka_answers; then
    echo "kafka: up on 127.0.0.1:$KAFKA_PORT (pid $(cat "$KAFKA_PID_FILE"), data $KAFKA_DATA)"
    if [ -n "${KAFKA_SASL_PORT:-}" ]; then secure_setup; fi
    exit 0
  fi
  if ! kill -0 "$(cat "$KAFKA_PID_FILE")" 2>/dev/null; then
    echo "kafka: broker exited during start-up; last lines of its log:" >&2
    tail -n 30 "$KAFKA_DATA/stdout.log" "$KAFKA_DATA/server.log" >&2 2>/dev/null || true
    exit 1
  fi
  sleep 0.5
done
echo "kafka: no answer on 127.0.0.1:$KAFKA_PORT after 60 s; see $KAFKA_DATA/server.log" >&2
exit 1
