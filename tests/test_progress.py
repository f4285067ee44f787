"""The progress line of a running job (rtrec/progress.py): the arithmetic and wording, without Flink."""

from __future__ import annotations

from rtrec.progress import Sample, describe, rate


def test_rate_is_events_between_two_samples_per_second():
    assert rate(None, Sample(10.0, 500, None, None)) == 0.0
    assert rate(Sample(10.0, 500, 7, 1), Sample(12.0, 4_500, 3, 2)) == 2_000.0
    # a restarted job's counters start again from 0: no negative rate
    assert rate(Sample(10.0, 500, 7, 1), Sample(12.0, 100, 3, 2)) == 0.0


def test_describe_names_what_is_known():
    assert describe(Sample(1.0, 10, 164_888, 23), 3_310.4) == "3,310 ev/s, lag 164,888, model v23"
    assert describe(Sample(1.0, 10, None, None), 0.0) == "0 ev/s"
    assert describe(Sample(1.0, 10, 0, None), 12.0) == "12 ev/s, lag 0"


def test_bar_shows_one_comma_before_the_postfix():
    from tqdm import tqdm

    from rtrec.progress import bar_format

    line = tqdm.format_meter(3_686, 20_000, 41, prefix="rtrec job", bar_format=bar_format(20_000),
                             postfix="1,781 ev/s, lag 0, model v3")
    assert line.endswith("3686/20000 ev [00:41, 1,781 ev/s, lag 0, model v3]"), line
    assert tqdm.format_meter(0, 20_000, 0, prefix="rtrec job", bar_format=bar_format(20_000)).endswith("ev [00:00]")
    assert tqdm.format_meter(12, None, 3, prefix="rtrec job", bar_format=bar_format(None),
                             postfix="4 ev/s") == "rtrec job: 12 ev [00:03, 4 ev/s]"


def test_the_minicluster_refreshes_metrics_faster_than_the_bar_samples_them():
    from jobs.environment import flink_settings
    from rtrec.config import RtrecConfig
    from rtrec.progress import JobProgress

    interval = flink_settings(RtrecConfig())["metrics.fetcher.update-interval"]
    assert interval.endswith(" s") and float(interval[:-2]) < JobProgress("x").interval_s


def test_summary_counts_dead_lettered_duplicates_once():
    from rtrec.progress import summary

    # a savepoint-resumed job fed 2,000 events it had seen: all duplicates, all dead letters
    line = summary(2_000, 2_000, {"duplicate event_id": 2_000}, {"predictions": 0})
    assert line.startswith("events in 2,000: accepted 0, duplicates 2,000, dead letters 2,000 (duplicate event_id 2,000)")


def test_the_minicluster_answers_job_state_and_checkpoints_fresher_than_a_bounded_run_polls_them():
    """finish_bounded polls the job's state and its checkpoints every 0.2-0.5 s and ends on them; with
    Flink's default (3 s) it saw the sources finish and each checkpoint complete up to 3 s late."""
    from jobs.environment import flink_settings
    from rtrec.config import RtrecConfig

    value, unit = flink_settings(RtrecConfig())["web.refresh-interval"].split()
    assert unit == "ms" and int(value) <= 500
    assert "web.refresh-interval" not in flink_settings(RtrecConfig(), local=False)  # a cluster's is its own


def test_the_local_minicluster_gives_rocksdb_managed_memory_unless_the_user_sizes_it():
    from jobs.environment import MINICLUSTER_MANAGED_MEMORY, flink_settings
    from rtrec.config import RtrecConfig

    assert flink_settings(RtrecConfig())["taskmanager.memory.managed.size"] == MINICLUSTER_MANAGED_MEMORY
    assert "taskmanager.memory.managed.size" not in flink_settings(RtrecConfig(), local=False)  # a cluster's own
    cfg = RtrecConfig()
    cfg.flink.options = {"taskmanager.memory.managed.size": "1g"}
    assert flink_settings(cfg)["taskmanager.memory.managed.size"] == "1g"
