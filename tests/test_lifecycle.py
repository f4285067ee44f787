"""rtrec/lifecycle.py without Flink: the run record, signals, and ending child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from rtrec import lifecycle
from rtrec.config import load_config


@pytest.fixture
def cfg(tmp_path):
    return load_config(overrides=[f"flink.checkpoint_dir={tmp_path / 'checkpoints'}", "flink.job_name=life"])


def test_the_run_record_names_the_rest_api_while_its_process_lives(cfg):
    assert lifecycle.read_run_record(cfg) is None
    path = lifecycle.write_run_record(cfg, "http://127.0.0.1:41234")
    assert path == lifecycle.run_record_path(cfg) and path.parent.name == "run"
    record = lifecycle.read_run_record(cfg, "life")
    assert (record.rest_url, record.pid, record.job_name) == ("http://127.0.0.1:41234", os.getpid(), "life")
    lifecycle.remove_run_record(cfg)
    assert not path.exists()


def test_a_record_left_by_a_dead_process_is_ignored(cfg):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = lifecycle.write_run_record(cfg, "http://127.0.0.1:1")
    path.write_text(path.read_text().replace(f'"pid": {os.getpid()}', f'"pid": {dead.pid}'))
    assert lifecycle.read_run_record(cfg) is None
    lifecycle.remove_run_record(cfg)  # not ours: left alone
    assert path.exists()


def test_stop_signals_raise_once_then_are_ignored():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        lifecycle.raise_on_stop_signals()
        with pytest.raises(lifecycle.StopRequested) as e:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert e.value.signum == signal.SIGTERM and str(e.value) == "SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)  # while stopping: ignored
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])


def test_end_processes_kills_what_ignores_sigterm():
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen([sys.executable, "-c",
                                 "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline().strip() == "ready"
    killed = lifecycle.end_processes([polite.pid, stubborn.pid], grace_s=1.0)
    assert killed == [stubborn.pid]
    assert polite.wait(5) == -signal.SIGTERM and stubborn.wait(5) == -signal.SIGKILL


def test_jvm_tmp_dir_goes_to_the_gateways_jvm_args(monkeypatch):
    monkeypatch.setenv("JVM_ARGS", "-Xss2m")
    d = lifecycle.jvm_tmp_dir()
    try:
        assert d.is_dir() and os.environ["JVM_ARGS"] == f"-Xss2m -Djava.io.tmpdir={d}"
    finally:
        lifecycle.remove_tree(d)
    assert not d.exists()


def test_start_position_follows_the_startup_mode_and_the_groups_offsets():
    end = {0: 100, 1: 50, 2: 0}
    assert lifecycle.start_position("earliest", end, {0: 80, 1: 50, 2: None}) == lifecycle.StartPosition(
        150, "from the beginning", True)
    assert lifecycle.start_position("latest", end, {}).to_read == 0
    continued = lifecycle.start_position("group-offsets", end, {0: 80, 1: 50, 2: None})
    assert (continued.to_read, continued.from_beginning) == (20, False)
    assert "committed offsets (20 events behind)" in continued.where
    new_group = lifecycle.start_position("group-offsets", end, {0: None, 1: None, 2: None})
    assert (new_group.to_read, new_group.from_beginning) == (150, True)
    assert "committed no offsets" in new_group.where
    # a partition the group never committed on is read from its start
    partly = lifecycle.start_position("group-offsets", end, {0: 100, 1: None, 2: None})
    assert (partly.to_read, partly.from_beginning) == (50, True)


def test_java_objects_collected_after_the_gateway_closed_send_nothing(monkeypatch, caplog):
    """At exit the MiniCluster's JVM is ended; py4j objects garbage-collected after that must not try
    to tell it (each try logged two tracebacks after a bounded run's summary)."""
    import gc
    import logging
    import socket

    from py4j.java_gateway import GatewayParameters, JavaGateway, JavaObject
    from pyflink import java_gateway

    with socket.socket() as s:  # a port nothing listens on: the JVM has gone
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gateway = JavaGateway(gateway_parameters=GatewayParameters(port=port))
    monkeypatch.setattr(java_gateway, "_gateway", gateway)
    obj = JavaObject("o42", gateway._gateway_client)
    lifecycle.close_gateway()
    assert java_gateway._gateway is None
    with caplog.at_level(logging.INFO):
        del obj
        gc.collect()
    assert not [r for r in caplog.records if r.levelno >= logging.INFO], caplog.text


def test_a_cancelled_jobs_late_log_lines_do_not_trip_the_leaked_class_loader_check():
    from jobs.environment import flink_settings
    from rtrec.config import RtrecConfig

    assert flink_settings(RtrecConfig())["classloader.check-leaked-classloader"] == "false"


def test_watermarks_come_as_often_as_batches_unless_set():
    """A watermark interval longer than the batch interval let a batch reach the UserStage ahead of the
    watermark that follows it (seen: an event from 1970 taken in, not dead-lettered as late)."""
    from jobs.environment import flink_settings
    from rtrec.config import load_config

    cfg = load_config(overrides=["flink.batch_interval_ms=70"])
    assert flink_settings(cfg)["pipeline.auto-watermark-interval"] == "70 ms"
    cfg.flink.options["pipeline.auto-watermark-interval"] = "1 s"
    assert flink_settings(cfg)["pipeline.auto-watermark-interval"] == "1 s"


def test_an_unbounded_run_stopped_from_outside_prints_its_summary(monkeypatch, capsys, tmp_path):
    """`rtrec stop` ends an unbounded `rtrec run` (its job finishes with a savepoint); the run then
    prints its summary as a bounded or signalled run does (it printed nothing)."""
    from collections import Counter

    from rtrec import cli, dead_letters, topics

    ends = iter([{0: 0}, {0: 0}, {0: 0}, {0: 0}, {0: 0}, {0: 5}, {0: 1}, {0: 2}])
    monkeypatch.setattr(topics, "prepare_job_topics", lambda *a: None)
    monkeypatch.setattr(topics, "end_offsets", lambda *a: next(ends))
    monkeypatch.setattr(topics, "committed_offsets", lambda *a: {0: 0})
    monkeypatch.setattr(dead_letters, "reasons_since", lambda *a: Counter())
    monkeypatch.setattr(lifecycle, "run_locally", lambda cfg, progress, ends=None: (object(), lifecycle.LocalRun(cfg)))
    assert cli.main(["run", "--no-progress", "--set", f"flink.checkpoint_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "ended: stopped from outside" in out
    assert "rtrec: run summary: events in 0: accepted 0, duplicates 0, dead letters 0; outputs: predictions 5, " \
           "recommendations 1, features 2" in out


def test_a_run_stopped_with_a_savepoint_prints_the_command_that_resumes_it(monkeypatch, capsys, tmp_path):
    """SIGTERM with flink.savepoint_on_stop: the resume command repeats the run's --config, --set and
    --bounded (it printed `rtrec run --from-savepoint PATH` alone, which resumed under the default job
    name and topics a run given its own configuration)."""
    import shlex
    from collections import Counter

    from rtrec import cli, dead_letters, topics

    def run_locally(cfg, progress, ends=None):
        run = lifecycle.LocalRun(cfg)
        run.stopped, run.savepoint = lifecycle.StopRequested(signal.SIGTERM), "file:/sp/savepoint-1"
        return None, run

    config = tmp_path / "my shop.yaml"
    config.write_text("flink:\n  job_name: shop\n  savepoint_on_stop: true\n")
    monkeypatch.setattr(topics, "prepare_job_topics", lambda *a: None)
    monkeypatch.setattr(topics, "end_offsets", lambda *a: {0: 0})
    monkeypatch.setattr(topics, "committed_offsets", lambda *a: {0: 0})
    monkeypatch.setattr(dead_letters, "reasons_since", lambda *a: Counter())
    monkeypatch.setattr(lifecycle, "run_locally", run_locally)
    given = ["--config", str(config), "--set", f"flink.checkpoint_dir={tmp_path}", "--bounded"]
    assert cli.main(["run", "--no-progress", *given]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("rtrec: resume with: "))
    assert shlex.split(line.removeprefix("rtrec: resume with: ")) == \
        ["rtrec", "run", *given, "--from-savepoint", "file:/sp/savepoint-1"]


def test_a_second_run_of_a_running_job_name_is_refused(monkeypatch, capsys, tmp_path):
    """Two `rtrec run` of one job name at once each read every event (Flink's Kafka source assigns the
    partitions itself) and wrote every output twice; the second is refused, naming the first, until the
    first ends (the lock goes with its process, however it ends)."""
    from rtrec import cli, topics

    started = []
    monkeypatch.setattr(topics, "prepare_job_topics", lambda *a: None)
    monkeypatch.setattr(topics, "end_offsets", lambda *a: {0: 0})
    monkeypatch.setattr(topics, "committed_offsets", lambda *a: {0: 0})
    monkeypatch.setattr(lifecycle, "run_locally",
                        lambda cfg, progress, ends=None: started.append(1) or (object(), lifecycle.LocalRun(cfg)))
    args = ["run", "--no-progress", "--set", f"flink.checkpoint_dir={tmp_path / 'checkpoints'}"]
    cfg = load_config(overrides=args[3:4])
    first = lifecycle.hold_job_name(cfg)  # (another process's run, as far as the lock goes)
    lifecycle.write_run_record(cfg, "http://127.0.0.1:8123")
    assert cli.main(args) == 2 and not started
    err = capsys.readouterr().err
    assert f"job 'rtrec' is already running from {tmp_path / 'checkpoints'} (pid {os.getpid()}, REST API " \
           "http://127.0.0.1:8123)" in err and f"`rtrec stop --set flink.checkpoint_dir={tmp_path / 'checkpoints'}`" in err
    assert cli.main([*args, "--set", "flink.job_name=other"]) == 0 and started  # (another name runs)
    first.close()
    assert cli.main(args) == 0 and len(started) == 2


def test_a_savepoint_the_job_cannot_map_is_one_line(monkeypatch, capsys, tmp_path):
    """An unbounded run's savepoint given to `rtrec run --bounded`: Flink's refusal was a Java stack trace."""
    from rtrec import cli, topics

    def refuse(cfg, progress, ends=None):
        raise RuntimeError("An error occurred while calling o92.executeAsync.\n: ...\nCaused by: java.lang."
                           "IllegalStateException: Failed to rollback to checkpoint/savepoint file:/sp. Cannot map "
                           "checkpoint/savepoint state for operator 0657548dc5515b85f49a220bf5ab5cf0 to the new "
                           "program, because the operator is not available in the new program.")

    monkeypatch.setattr(topics, "prepare_job_topics", lambda *a: None)
    monkeypatch.setattr(topics, "end_offsets", lambda *a: {0: 0})
    monkeypatch.setattr(lifecycle, "run_locally", refuse)
    assert cli.main(["run", "--bounded", "--no-progress", "--from-savepoint", "file:/sp",
                     "--set", f"flink.checkpoint_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "operator 0657548dc5515b85f49a220bf5ab5cf0" in err[0] and "--bounded" in err[0], err


def test_the_gateways_jvm_starts_in_a_process_group_of_its_own(monkeypatch):
    """A signal to rtrec's whole process group (``timeout``) must not reach the JVM before the savepoint."""
    import pyflink.pyflink_gateway_server as server

    monkeypatch.setattr(server, "Popen", server.Popen)  # (restored after the test)
    lifecycle.jvm_in_its_own_session()
    lifecycle.jvm_in_its_own_session()  # (idempotent)
    assert server.Popen.own_session
    # What PyFlink's launch_gateway_server_process does with its command:
    proc = server.Popen([sys.executable, "-c", "import time; time.sleep(30)"], stdin=subprocess.PIPE,
                        stderr=subprocess.PIPE)
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    finally:
        proc.kill()
        proc.wait()


def _left(cfg, where: str, age_s: float) -> None:
    """What Flink leaves of a checkpoint or savepoint: a folder with a _metadata file, ``age_s`` old."""
    folder = cfg.resolve_path(cfg.flink.checkpoint_dir).parent / where
    folder.mkdir(parents=True)
    (folder / "_metadata").write_bytes(b"")
    t = time.time() - age_s
    os.utime(folder / "_metadata", (t, t))


def test_each_run_fixes_its_job_id_and_is_listed_newest_first(cfg):
    first = lifecycle.record_run(cfg, bounded=False)
    assert cfg.flink.options[lifecycle.FIXED_JOB_ID] == first and len(first) == 32
    int(first, 16)  # (Flink's JobID.fromHexString)
    second = lifecycle.record_run(cfg, bounded=True)
    assert [(r.job_id, r.bounded) for r in lifecycle.past_runs(cfg)] == [(second, True), (first, False)]
    for _ in range(lifecycle.RUNS_KEPT):
        lifecycle.record_run(cfg, bounded=False)
    assert len(lifecycle.past_runs(cfg)) == lifecycle.RUNS_KEPT
    assert first not in {r.job_id for r in lifecycle.past_runs(cfg)}


def test_resume_takes_the_newest_state_of_an_earlier_run_of_the_same_kind(cfg):
    assert lifecycle.resume_point(cfg, bounded=False) is None
    old = lifecycle.record_run(cfg, bounded=False)
    bounded = lifecycle.record_run(cfg, bounded=True, ends={0: 120, 3: 7})
    failed = lifecycle.record_run(cfg, bounded=False)  # (refused at its start: it left nothing)
    _left(cfg, f"checkpoints/{old}/chk-7", age_s=300)
    _left(cfg, f"checkpoints/{bounded}/chk-3", age_s=10)  # newer, but of a bounded run
    _left(cfg, "checkpoints/0123456789abcdef0123456789abcdef/chk-9", age_s=1)  # a run not listed
    point = lifecycle.resume_point(cfg, bounded=False)
    assert (point.kind, point.job_id, point.path.name) == ("checkpoint", old, "chk-7")
    assert lifecycle.resume_point(cfg, bounded=True).job_id == bounded
    # (a bounded run's end, which a run resumed from its state reads to: FLINK-31006 and finish_bounded)
    assert lifecycle.resume_point(cfg, bounded=True).ends == {"0": 120, "3": 7} and point.ends is None
    # `rtrec stop` then took a savepoint of the old run: the newest state it left.
    _left(cfg, f"savepoints/savepoint-{old[:6]}-5e7a1b2c3d4f", age_s=100)
    point = lifecycle.resume_point(cfg, bounded=False)
    assert (point.kind, point.path.name) == ("savepoint", f"savepoint-{old[:6]}-5e7a1b2c3d4f")
    _left(cfg, f"checkpoints/{failed}/chk-1", age_s=50)
    assert lifecycle.resume_point(cfg, bounded=False).job_id == failed
    assert "taken " in point.describe() and str(point.path) in point.describe()


def test_resume_has_nothing_to_find_on_a_clusters_storage(cfg):
    lifecycle.record_run(cfg, bounded=False)
    cfg.flink.checkpoint_dir = "s3://bucket/rtrec/checkpoints"
    assert lifecycle.resume_point(cfg, bounded=False) is None


def test_run_resume_restores_the_newest_state_or_says_why_it_cannot(monkeypatch, capsys, tmp_path):
    from rtrec import cli, topics

    started = []

    def run_locally(cfg, progress, ends=None):
        started.append(dict(cfg.flink.options))
        return object(), lifecycle.LocalRun(cfg)

    monkeypatch.setattr(topics, "prepare_job_topics", lambda *a: None)
    monkeypatch.setattr(topics, "end_offsets", lambda *a: {0: 0})
    monkeypatch.setattr(topics, "committed_offsets", lambda *a: {0: 0})
    monkeypatch.setattr(lifecycle, "run_locally", run_locally)
    args = ["run", "--no-progress", "--set", f"flink.checkpoint_dir={tmp_path / 'checkpoints'}"]
    assert cli.main([*args, "--resume"]) == 2
    assert "--resume: no earlier run of job 'rtrec' left a checkpoint or savepoint" in capsys.readouterr().err
    assert not started
    assert cli.main(args) == 0  # a run that leaves a checkpoint
    first = started[-1][lifecycle.FIXED_JOB_ID]
    cfg = load_config(overrides=[f"flink.checkpoint_dir={tmp_path / 'checkpoints'}"])
    _left(cfg, f"checkpoints/{first}/chk-4", age_s=5)
    assert cli.main(args) == 0  # without --resume: says what it leaves behind, and the command that resumes
    err = capsys.readouterr().err
    assert f"checkpoints/{first}/chk-4" in err
    assert f"`rtrec run --set flink.checkpoint_dir={tmp_path / 'checkpoints'} --resume` continues from it" in err
    assert "execution.state-recovery.path" not in started[-1]
    assert cli.main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    restored = str(tmp_path / "checkpoints" / first / "chk-4")
    assert started[-1]["execution.state-recovery.path"] == restored
    assert f"rtrec: resuming from the checkpoint {restored}" in out and f"restoring {restored}" in out
    assert started[-1][lifecycle.FIXED_JOB_ID] not in (first, started[-2][lifecycle.FIXED_JOB_ID])
    assert cli.main([*args, "--resume", "--bounded"]) == 2  # the unbounded runs' state is no bounded run's
    assert cli.main([*args, "--resume", "--from-savepoint", restored]) == 2


def test_a_bounded_resume_reads_to_the_end_of_the_run_it_resumes(monkeypatch, capsys, tmp_path):
    """A bounded run's source reads to the topic's end when it starts, and a source restored from its state
    keeps that end (Flink's Kafka splits hold it): `rtrec run --bounded --resume` hands the job that end
    (jobs.rtrec_job.finish_bounded drains the job there, FLINK-31006) and says that later events wait."""
    from types import SimpleNamespace

    from rtrec import cli, dead_letters, topics

    handed = []

    def run_locally(cfg, progress, ends=None):
        handed.append(ends)
        return SimpleNamespace(get_net_runtime=lambda: 1_000), lifecycle.LocalRun(cfg)

    end = {0: 40, 1: 25}
    monkeypatch.setattr(topics, "prepare_job_topics", lambda *a: None)
    monkeypatch.setattr(topics, "end_offsets", lambda *a: dict(end))
    monkeypatch.setattr(topics, "committed_offsets", lambda *a: {0: None, 1: None})
    monkeypatch.setattr(lifecycle, "run_locally", run_locally)
    monkeypatch.setattr(dead_letters, "reasons_since", lambda *a: {})
    args = ["run", "--bounded", "--no-progress", "--set", f"flink.checkpoint_dir={tmp_path / 'checkpoints'}",
            "--set", "model.warm_start=false"]  # (no model-updates topic to look at)
    cli.main(args)
    assert handed[-1] == {0: 40, 1: 25}
    cfg = load_config(overrides=[f"flink.checkpoint_dir={tmp_path / 'checkpoints'}"])
    _left(cfg, f"checkpoints/{lifecycle.past_runs(cfg)[0].job_id}/chk-2", age_s=5)
    end.update({0: 70})  # 30 more events
    capsys.readouterr()
    cli.main([*args, "--resume"])
    assert handed[-1] == {0: 40, 1: 25}
    assert (f"the 30 events that came since stay for the next `rtrec run --set flink.checkpoint_dir={tmp_path / 'checkpoints'}"
            " --set model.warm_start=false --bounded`") in capsys.readouterr().err
    assert lifecycle.past_runs(cfg)[0].ends == {"0": 40, "1": 25}  # (inherited: a resume of it reads to it too)
    cli.main(args)  # a new bounded run: to the end now
    assert handed[-1] == {0: 70, 1: 25}
