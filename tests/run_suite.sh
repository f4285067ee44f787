#!/usr/bin/env bash
# `make test`: the integration tests (real broker, real Flink) in the foreground, the unit tests
# beside them on one torch thread. The integration tests mostly wait on JVMs, checkpoints and
# brokers, so running the two sets side by side saves most of the unit tests' 4-5 minutes on a
# 2-core machine. Fails if either set fails; pytest's 5 (nothing collected) counts as a failure
# only if both sets collected nothing.
#
#     tests/run_suite.sh PYTHON [PYTEST ARGS...]
set -uo pipefail
py=$1
shift
mkdir -p var
log=var/unit-tests.log
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$py" -m pytest -m "not integration" "$@" >"$log" 2>&1 &
unit=$!
"$py" -m pytest -m integration --durations=20 "$@"
integration=$?
wait "$unit"
unit_rc=$?
echo "---- unit tests (run beside the integration tests; $log) ----"
cat "$log"
echo "integration tests: exit $integration; unit tests: exit $unit_rc"
ok() { [ "$1" -eq 0 ] || [ "$1" -eq 5 ]; }
if ok "$integration" && ok "$unit_rc" && ! { [ "$integration" -eq 5 ] && [ "$unit_rc" -eq 5 ]; }; then
    exit 0
fi
exit 1
