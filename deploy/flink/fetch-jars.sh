#!/usr/bin/env bash
# Download the Flink Kafka connector jar from Maven Central into deploy/flink/lib (once).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if ls "$here"/lib/flink-sql-connector-kafka-*.jar >/dev/null 2>&1; then exit 0; fi
echo "fetching the Flink Kafka connector with Maven into $here/lib"
mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies
