#!/usr/bin/env bash
# Download the broker jars from Maven Central into deploy/kafka/lib (once).
set -euo pipefail
source "$(dirname "$0")/env.sh"
if ls "$KAFKA_HOME"/lib/kafka_2.13-*.jar >/dev/null 2>&1; then exit 0; fi
echo "fetching Kafka broker jars with Maven into $KAFKA_HOME/lib"
mvn -q -B -f "$KAFKA_HOME/pom.xml" dependency:copy-dependencies
