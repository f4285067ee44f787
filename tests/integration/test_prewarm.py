"""A local run gets the TaskManager's embedded Python ready while the client builds the job
(jobs.environment.warm_embedded_python, udfs.prewarm)."""

from __future__ import annotations

import pytest
from pyflink.java_gateway import get_gateway

from jobs.environment import create_environments, embedded_interpreter, warm_embedded_python
from rtrec.config import load_config

pytestmark = pytest.mark.integration


def test_the_embedded_python_is_ready_before_the_job_and_the_planner_keeps_working(capfd):
    cfg = load_config(overrides=["model.enabled=true", "text.enabled=false"])
    env, t_env = create_environments(cfg)
    warming = warm_embedded_python(cfg)
    # The client goes on building while the interpreter warms up. The table planner keeps state in
    # the JVM thread that serves this thread's py4j calls: sharing py4j's connections with the warming
    # thread moved them to another one, and this conversion failed inside Calcite.
    for n in range(3):
        table = t_env.from_elements([(n, "a")], ["n", "s"])
        t_env.to_data_stream(table.select(table.n + 1))
    warming.join(timeout=240)
    assert not warming.is_alive()
    assert "could not prepare" not in capfd.readouterr().err

    interpreter = embedded_interpreter(get_gateway())
    try:
        interpreter.exec(
            "import sys\n"
            "from models import sequential\n"
            "modules = [m for m in ('pyflink.fn_execution.embedded.operation_utils', 'udfs.user_stage',"
            " 'udfs.item_stage', 'udfs.merger', 'torch') if m not in sys.modules]\n"
            "compiled = len(sequential._mf_pass.signatures) > 0 and len(sequential._ranker_fusion_pass.signatures) > 0\n"
        )
        assert list(interpreter.get("modules")) == []
        assert interpreter.get("compiled")
    finally:
        interpreter.close()
