# Shared settings for the broker scripts; source it, don't run it.
KAFKA_HOME="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_PORT="${KAFKA_PORT:-9092}"
CONTROLLER_PORT="${CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_DATA="${KAFKA_DATA:-$KAFKA_HOME/data/$KAFKA_PORT}"
KAFKA_PID_FILE="$KAFKA_DATA/kafka.pid"
KAFKA_CLASSPATH="$KAFKA_HOME/lib/*"
export KAFKA_HOME KAFKA_PORT CONTROLLER_PORT KAFKA_DATA KAFKA_PID_FILE

kafka_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; }
