"""Importing the operators' package where PyFlink's process-mode worker runs it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What PyFlink's Beam worker (process mode) does before it loads the job's operators: it replaces
# builtins.print with a method of its own. Then the operators' package is imported, and with it Numba.
PROCESS_MODE_WORKER = """
import builtins
from pyflink.fn_execution.beam.beam_sdk_worker_main import CustomPrint
builtins.print = CustomPrint(print).print
import udfs
import numba
from rtrec.features import compiled
assert isinstance(builtins.print.__self__, CustomPrint), "the worker's print is put back"
print("imported")
"""


def test_the_operators_import_numba_under_the_process_mode_workers_print():
    run = subprocess.run([sys.executable, "-c", PROCESS_MODE_WORKER], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "imported" in run.stdout
