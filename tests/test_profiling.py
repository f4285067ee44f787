"""rtrec.profiling and the torch thread's profile (models.worker)."""

from __future__ import annotations

import pstats

from models import worker
from rtrec.profiling import OperatorProfile


def busy(n: int) -> int:
    return sum(i * i for i in range(n))


def test_off_unless_a_directory_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv("RTREC_PROFILE_DIR", raising=False)
    p = OperatorProfile("Stage", 0)
    with p:
        busy(10)
    p.dump()
    assert not p and list(tmp_path.iterdir()) == []


def test_written_while_running_not_only_at_close(monkeypatch, tmp_path):
    """A cancelled job never closes some operators: the profile is rewritten every RTREC_PROFILE_EVERY_S."""
    monkeypatch.setenv("RTREC_PROFILE_DIR", str(tmp_path))
    monkeypatch.setenv("RTREC_PROFILE_EVERY_S", "0")
    p = OperatorProfile("Stage", 3)
    with p:
        busy(1000)
    stats = pstats.Stats(str(tmp_path / "Stage-3.prof"))
    assert any(fn[2] == "busy" for fn in stats.stats)


def test_the_torch_thread_has_its_own_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("RTREC_PROFILE_DIR", str(tmp_path))
    monkeypatch.setenv("RTREC_PROFILE_EVERY_S", "0")
    monkeypatch.setattr(worker, "_profile", None)
    assert worker.torch_call(busy, 1000) == busy(1000)
    (path,) = tmp_path.glob("torch-thread-*.prof")
    assert any(fn[2] == "busy" for fn in pstats.Stats(str(path)).stats)
    monkeypatch.setattr(worker, "_profile", None)
