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
