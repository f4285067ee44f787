#!/usr/bin/env bash
# `make test`: the integration tests (real broker, real Flink) in the foreground, the unit tests
# beside them on one torch thread. The integration tests mostly wait on JVMs, checkpoints, restarts
# and brokers, so they run as two pytest-xdist workers, a whole module at a time, longest first
# (tests/conftest.py LONGEST_FIRST; RTREC_TEST_WORKERS sets the count, 1 runs them one after the
# other), and the unit tests run beside them. On this 2-core machine the integration tests took
# 8.8-10.7 min that way (2026-12-02), against 19.6 min one at a time on an earlier day. Fails if
# either set fails; pytest's 5 (nothing collected) counts as a failure only if both sets collected
# nothing.
#
#     tests/run_suite.sh PYTHON [PYTEST ARGS...]
set -uo pipefail
py=$1
shift
mkdir -p var
log=var/unit-tests.log
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$py" -m pytest -m "not integration" "$@" >"$log" 2>&1 &
unit=$!
"$py" -m pytest -m integration -n "${RTREC_TEST_WORKERS:-2}" --dist loadfile --durations=20 "$@"
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
