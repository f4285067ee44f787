import time

import pytest

from rtrec.config import ConfigError, load_config, validate
from udfs.faults import FaultInjector, InjectedFault, fired_count


def checkpoint_completes(tmp_path):
    """What Flink leaves when a checkpoint completes: <checkpoints>/<job id>/chk-<n>/_metadata."""
    chk = tmp_path / "checkpoints" / "0123abcd" / f"chk-{time.time_ns()}"
    chk.mkdir(parents=True)
    (chk / "_metadata").write_bytes(b"")


def config(tmp_path, operator="user-stage", after=10, times=1):
    cfg = load_config(overrides=[f"faults.operator={operator}", f"faults.after_records={after}",
                                 f"faults.times={times}"])
    cfg.flink.checkpoint_dir = str(tmp_path / "checkpoints")
    return cfg


def test_fires_once_after_n_records_and_not_again_after_a_restart(tmp_path):
    cfg = config(tmp_path)
    f = FaultInjector(cfg, "user-stage", 0)
    f.count(6)
    f.count(5)  # enough records, but no checkpoint to recover from yet
    f.started -= 1  # (file times are coarser than time.time())
    checkpoint_completes(tmp_path)
    f.next_look = 0
    with pytest.raises(InjectedFault, match="after 12 records"):
        f.count(1)
    f.count(100)  # disarmed
    again = FaultInjector(cfg, "user-stage", 0)  # the recovered operator
    again.count(1000)


def test_fails_times_times_each_after_n_records_since_the_restart(tmp_path):
    cfg = config(tmp_path, after=10, times=3)
    for k in range(1, 4):
        f = FaultInjector(cfg, "user-stage", 0)  # the job as (re)started
        f.started -= 1  # a moment before the checkpoint below
        checkpoint_completes(tmp_path)
        f.count(9)
        with pytest.raises(InjectedFault, match=f"fault {k} of 3 after 12 records"):
            f.count(3)
    assert fired_count(tmp_path / "checkpoints" / "fault-user-stage.fired") == 3
    FaultInjector(cfg, "user-stage", 0).count(1000)  # used up: runs on


def test_only_the_named_operator_and_first_subtask_fail(tmp_path):
    cfg = config(tmp_path)
    for op, subtask in (("item-stage", 0), ("user-stage", 1)):
        FaultInjector(cfg, op, subtask).count(1000)
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_operator_or_no_times_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="faults.operator"):
        validate(config(tmp_path, operator="sink"))
    with pytest.raises(ConfigError, match="faults.times"):
        validate(config(tmp_path, times=0))
