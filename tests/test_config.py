import pytest

from rtrec.config import ConfigError, load_config, parse_override


def test_defaults_run_against_the_local_broker():
    cfg = load_config()
    assert cfg.kafka.bootstrap_servers.endswith(":9092") or cfg.kafka.bootstrap_servers  # env may point elsewhere
    assert cfg.flink.delivery_guarantee == "exactly-once"
    assert (cfg.flink.shards, cfg.flink.key_shards) == (0, 1)  # automatic: one shard at parallelism 1


def test_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("flink:\n  parallelism: 2\n  options:\n    taskmanager.memory.process.size: 2g\nmodel:\n  dim: 8\n")
    cfg = load_config(f, ["model.dim=16", "flink.bounded=true", "kafka.events_topic=clicks"])
    assert cfg.flink.parallelism == 2
    assert cfg.flink.options == {"taskmanager.memory.process.size": "2g"}
    assert cfg.model.dim == 16
    assert cfg.flink.bounded is True
    assert cfg.kafka.events_topic == "clicks"


def test_environment_names_the_broker(monkeypatch):
    monkeypatch.setenv("RTREC_BOOTSTRAP_SERVERS", "kafka.example:9093")
    assert load_config().kafka.bootstrap_servers == "kafka.example:9093"


@pytest.mark.parametrize(
    "override, message",
    [
        ("flink.paralelism=2", "unknown setting"),
        ("model.dim=wide", "model.dim: expected a whole number, got 'wide'"),
        ("flink.bounded=maybe", "expected true or false"),
        ("flink.delivery_guarantee=twice", "exactly-once or at-least-once"),
        ("flink.shards=-1", "flink.shards at least 0"),
        ("nosuchsection.x=1", "unknown setting"),
        ("no-equals-sign", "expected section.key=value"),
    ],
)
def test_bad_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_override_values_are_yaml():
    assert parse_override("a.b=2") == {"a": {"b": 2}}
    assert parse_override("a.b=x:y") == {"a": {"b": "x:y"}}


def test_topic_prefix_renames_every_topic():
    k = load_config().kafka.with_prefix("p.")
    names = [k.events_topic, *k.output_topics()]
    assert all(n.startswith("p.") for n in names) and len(set(names)) == len(names)


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("flink:\n  parallelism: 1.7\n", r"flink.parallelism: expected a whole number, got 1.7 \(a decimal number\)"),
        ("model:\n  top_k: true\n", r"model.top_k: expected a whole number, got true \(a boolean\)"),
        ("kafka:\n  bootstrap_servers: ['127.0.0.1:39092']\n",
         r"kafka.bootstrap_servers: expected a string, got a list \['127.0.0.1:39092'\]; give several brokers as "
         "one comma-separated string"),
        ("model:\n  enabled: 1\n", r"model.enabled: expected true or false, got 1"),
        ("model:\n  rating_max: five\n", r"model.rating_max: expected a number, got 'five'"),
        ("model:\n  rating_max: false\n", r"model.rating_max: expected a number, got false"),
        ("text:\n  model_path:\n", r"text.model_path: expected a string, got nothing \(null\)"),
        ("flink:\n  options:\n    a.b: [1, 2]\n", r"flink.options.a.b: expected a single value, got a list"),
        ("flink: 2\n", r"flink: expected a mapping of its settings, got 2"),
    ],
)
def test_config_file_values_are_taken_only_as_their_type(tmp_path, yaml_text, message):
    f = tmp_path / "c.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=f"^config file {f}: {message}"):
        load_config(f)


@pytest.mark.parametrize("override, message", [
    ("flink.parallelism=1.7", "expected a whole number"),
    ("model.top_k=true", "expected a whole number"),
    ("kafka.bootstrap_servers=[a:1, b:2]", "expected a string, got a list"),
    ("model.dim=[", "the value is not valid YAML"),
])
def test_overrides_are_as_strict_and_name_the_key(override, message):
    with pytest.raises(ConfigError, match=r"^--set .*" + message):
        load_config(overrides=[override])


@pytest.mark.parametrize("setting", ["model.device=gpu", "text.device=cuda:x", "model.device=CPU"])
def test_devices_are_checked(setting):
    key, value = setting.split("=")
    with pytest.raises(ConfigError, match=rf"^{key}: expected auto, cpu, cuda or cuda:N .*got '{value}'"):
        load_config(overrides=[setting])


def test_values_of_the_right_type_and_their_spellings_are_taken(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("flink:\n  parallelism: '2'\n  options:\n    pipeline.object-reuse: true\n"
                 "model:\n  rating_max: 10\n  device: cuda:1\n  enabled: 'off'\n"
                 "kafka:\n  consumer_group: 2024\n")
    cfg = load_config(f, ["model.dim=1_000", "text.device=cpu"])
    assert (cfg.flink.parallelism, cfg.model.dim, cfg.model.rating_max) == (2, 1000, 10.0)
    assert isinstance(cfg.model.rating_max, float) and cfg.model.enabled is False
    assert cfg.flink.options == {"pipeline.object-reuse": "true"}  # Flink's spelling, not Python's True
    assert (cfg.model.device, cfg.text.device, cfg.kafka.consumer_group) == ("cuda:1", "cpu", "2024")


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("kafka:\n  events_topic: clicks\n  bootstrap_servers 127.0.0.1:9092\nflink:\n  parallelism: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    text = str(e.value)
    assert text.startswith(f"config file {f}, line ") and "not valid YAML" in text and "\n" not in text
    assert "line 3" in text  # the line without its colon


def test_a_yaml_error_is_one_line_from_the_command_line(tmp_path, capsys):
    from rtrec.cli import main

    f = tmp_path / "c.yaml"
    f.write_text("model:\n  dim: [1, 2\n")
    assert main(["config", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rtrec: error: config file {f}, line ") and err.count("\n") == 1


def test_the_config_command_prints_what_a_command_would_use(tmp_path, capsys):
    import yaml

    from rtrec.cli import main

    f = tmp_path / "c.yaml"
    f.write_text("flink:\n  parallelism: 2\n")
    assert main(["config", "--config", str(f), "--set", "model.dim=8", "--bootstrap-servers", "b:9"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert (shown["flink"]["parallelism"], shown["model"]["dim"], shown["kafka"]["bootstrap_servers"]) == (2, 8, "b:9")


def test_backfill_takes_config_and_set(tmp_path, capsys):
    from rtrec.cli import main
    from rtrec.events import Event
    from rtrec.sources import write_jsonl

    src = write_jsonl([Event("e1", "u1", "i1", "rating", 1_000, 8.0)], tmp_path / "ev.jsonl")
    out = tmp_path / "f.parquet"
    # A rating of 8 is outside the default 1..5 scale: refused, naming the setting ...
    assert main(["backfill", str(src), "-o", str(out)]) == 2
    assert "outside model.rating_min..rating_max (1..5)" in capsys.readouterr().err
    # ... and taken on a 0..10 scale, from a file and an override.
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  rating_min: 0\n")
    assert main(["backfill", str(src), "-o", str(out), "--config", str(f), "--set", "model.rating_max=10"]) == 0
    assert out.exists()
    assert main(["backfill", str(src), "--set", "model.rating_max=ten"]) == 2
    assert "model.rating_max: expected a number" in capsys.readouterr().err


ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture
def fake_flink(tmp_path):
    """cluster.sh with a stand-in `flink` that writes its arguments to a file (PY answers the wheel's location)."""
    import os
    import stat
    import sys

    home = tmp_path / "flink"
    (home / "bin").mkdir(parents=True)
    args = tmp_path / "flink-args"
    (home / "bin" / "flink").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {args}\n')
    py = tmp_path / "py"
    py.write_text(f'#!/bin/sh\n[ "$1" = -c ] && {{ echo {home}; exit 0; }}\nexec {sys.executable} "$@"\n')
    for f in (home / "bin" / "flink", py):
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PY": str(py)}
    env.pop("RTREC_CONFIG", None)

    def submit(*argv):
        import subprocess

        proc = subprocess.run(["bash", str(ROOT / "deploy/flink/bin/cluster.sh"), "submit", *argv], env=env,
                              capture_output=True, text=True, timeout=60)
        passed = args.read_text().splitlines() if args.exists() else None
        return proc, passed

    return submit


def test_cluster_submit_passes_flink_options_and_the_jobs_own(fake_flink):
    proc, passed = fake_flink("-s", "/sp/1", "--set", "flink.parallelism=2", "--bootstrap-servers", "b:9092")
    assert proc.returncode == 0, proc.stderr
    module = passed.index("--pyModule")
    assert passed[module + 1] == "jobs.rtrec_job"
    assert passed.index("-s") < module and passed[passed.index("-s") + 1] == "/sp/1"
    assert passed[-4:] == ["--set", "flink.parallelism=2", "--bootstrap-servers", "b:9092"]


@pytest.mark.parametrize("argv, message", [
    (["--set", "flink.paralelism=2"], "flink.paralelism: unknown setting"),
    (["--set", "flink.parallelism=1.5"], "expected a whole number"),
    (["--bootstrap-servers", "b:1", "-s", "/sp/1"], "unrecognized arguments: -s /sp/1"),
])
def test_cluster_submit_refuses_bad_job_arguments_before_flink_starts(fake_flink, argv, message):
    proc, passed = fake_flink(*argv)
    assert proc.returncode == 2 and passed is None
    assert message in proc.stderr and "cluster: usage: cluster.sh submit" in proc.stderr
    assert "Exception" not in proc.stderr and len(proc.stderr.splitlines()) <= 4


def test_a_written_configuration_loads_back_the_same(tmp_path, capsys, monkeypatch):
    """`rtrec config` output (and tests' write_config) is itself a configuration the strict types take."""
    from rtrec.cli import main

    monkeypatch.delenv("RTREC_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("RTREC_CONFIG", raising=False)
    assert main(["config", "--set", "flink.options={a.b: 2}", "--set", "model.rating_max=10",
                 "--bootstrap-servers", "h:1"]) == 0
    f = tmp_path / "c.yaml"
    f.write_text(capsys.readouterr().out)
    again = load_config(f)
    assert again == load_config(overrides=["flink.options={a.b: 2}", "model.rating_max=10",
                                           "kafka.bootstrap_servers=h:1"])


def test_every_command_takes_config_and_set():
    from rtrec.cli import build_parser

    ap = build_parser()
    commands = next(a for a in ap._actions if isinstance(a, __import__("argparse")._SubParsersAction)).choices
    assert {"replay", "run", "backfill", "eval", "dead-letters", "config", "demo"} <= set(commands)
    for name, p in commands.items():
        options = {o for a in p._actions for o in a.option_strings}
        assert {"--config", "--set", "--bootstrap-servers"} <= options, name


def test_cluster_kill_taskmanager_spares_another_clusters_taskmanager(tmp_path):
    """Two clusters on one machine both have a tm-1: kill-taskmanager kills only its own (--configDir)."""
    import os
    import subprocess

    other = subprocess.Popen(["bash", "-c", 'exec -a "java --configDir /elsewhere/conf x '
                              '-Dtaskmanager.resource-id=tm-1" sleep 60'])
    try:
        env = {**os.environ, "RTREC_CLUSTER_DIR": str(tmp_path / "cluster")}
        proc = subprocess.run(["bash", str(ROOT / "deploy/flink/bin/cluster.sh"), "kill-taskmanager", "tm-1"],
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and "no TaskManager process with resource id tm-1" in proc.stderr, proc
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_the_standalone_clusters_temporary_files_stay_in_its_folder(tmp_path):
    """cluster-conf.py points every temporary folder of the cluster's processes under RTREC_CLUSTER_DIR
    (`cluster.sh down` removes it): in /tmp they outlived the cluster."""
    import subprocess
    import sys

    import yaml

    subprocess.run([sys.executable, str(ROOT / "deploy/flink/bin/cluster-conf.py"), str(tmp_path / "conf"), "8081",
                    "1"], check=True, timeout=60)
    conf = yaml.safe_load((tmp_path / "conf" / "config.yaml").read_text())
    tmp = str(tmp_path / "tmp")
    assert conf["io"]["tmp"]["dirs"] == tmp and conf["web"]["tmpdir"] == tmp
    assert f"-Djava.io.tmpdir={tmp}" in conf["env"]["java"]["opts"]["all"]
    assert "--add-opens" in conf["env"]["java"]["opts"]["all"]  # (the wheel's own options stay)
