import pytest

from rtrec.config import ConfigError, load_config, validate
from udfs.faults import FaultInjector, InjectedFault


def config(tmp_path, operator="user-stage", after=10):
    cfg = load_config(overrides=[f"faults.operator={operator}", f"faults.after_records={after}"])
    cfg.flink.checkpoint_dir = str(tmp_path / "checkpoints")
    return cfg


def test_fires_once_after_n_records_and_not_again_after_a_restart(tmp_path):
    cfg = config(tmp_path)
    f = FaultInjector(cfg, "user-stage", 0)
    f.count(6)
    with pytest.raises(InjectedFault, match="after 11 records"):
        f.count(5)
    f.count(100)  # disarmed
    again = FaultInjector(cfg, "user-stage", 0)  # the recovered operator
    again.count(1000)


def test_only_the_named_operator_and_first_subtask_fail(tmp_path):
    cfg = config(tmp_path)
    for op, subtask in (("item-stage", 0), ("user-stage", 1)):
        FaultInjector(cfg, op, subtask).count(1000)
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_operator_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="faults.operator"):
        validate(config(tmp_path, operator="sink"))
