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
    monkeypatch.setattr(lifecycle, "run_locally", lambda cfg, progress: (object(), lifecycle.LocalRun(cfg)))
    assert cli.main(["run", "--no-progress", "--set", f"flink.checkpoint_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "ended: stopped from outside" in out
    assert "rtrec: run summary: events in 0: accepted 0, duplicates 0, dead letters 0; outputs: predictions 5, " \
           "recommendations 1, features 2" in out


def test_a_savepoint_the_job_cannot_map_is_one_line(monkeypatch, capsys, tmp_path):
    """An unbounded run's savepoint given to `rtrec run --bounded`: Flink's refusal was a Java stack trace."""
    from rtrec import cli, topics

    def refuse(cfg, progress):
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
