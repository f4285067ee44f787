"""rtrec eval's metrics against values computed by hand (the comments show the arithmetic)."""

from __future__ import annotations

import math

import orjson
import pytest
from pytest import approx

from rtrec.evaluation import (
    EvalError,
    Example,
    Recommendation,
    binary_metrics,
    error_metrics,
    evaluate,
    recall_at_k,
    rescale,
    window_of,
    write_report,
)

DAY = 86_400_000
PNG = b"\x89PNG\r\n\x1a\n"


def pred(ts, user, item, type_, label, mf, ftrl, fused):
    return {"event_id": f"e{ts}", "user_id": user, "item_id": item, "ts": ts, "type": type_, "label": label,
            "model_version": 1, "scores": {"mf": mf, "ftrl": ftrl}, "fused": fused, "heldout": False,
            "trainer": 0}


PREDICTIONS = [
    pred(1000, "u1", "i1", "rating", 5.0, 4.0, 3.0, 4.5),  # positive (>= 4)
    pred(2000, "u1", "i2", "rating", 2.0, 3.0, 2.0, 2.5),
    pred(DAY + 1000, "u2", "i3", "rating", 4.0, 3.0, 5.0, 4.0),  # positive
    pred(DAY + 2000, "u2", "i4", "rating", 1.0, 2.0, 1.0, 1.0),
    pred(3000, "u1", "i5", "click", 1.0, 0.8, 0.6, 0.7),  # positive
    pred(4000, "u1", "i6", "impression", 0.0, 0.3, 0.7, 0.4),
    pred(5000, "u3", "i1", "purchase", 1.0, 0.9, 0.9, 0.9),  # positive, u3 never got a list
]
RECOMMENDATIONS = [
    {"user_id": "u1", "ts": 500, "items": ["i1", "i9", "i8"], "request": "refresh"},
    {"user_id": "u1", "ts": 1000, "items": ["i7", "i5"], "request": "refresh"},
    {"user_id": "u2", "ts": DAY, "items": ["i9", "i8", "i3"], "request": "refresh"},
    # A ranked request is not a top-k list: it would make i3 a hit if it counted.
    {"user_id": "u2", "ts": DAY + 500, "items": ["i3"], "request": "candidates"},
]


def test_pure_metrics():
    assert rescale(3.0) == 0.5 and rescale(7.0) == 1.0 and rescale(0.5, 0, 1) == 0.5
    assert error_metrics([], [])["n"] == 0 and math.isnan(error_metrics([], [])["mae"])
    # |3-4| + |4-4| + |2-4| = 3 over 3; sqrt((1 + 0 + 4) / 3)
    assert error_metrics([3, 4, 2], [4, 4, 4]) == {"n": 3, "mae": 1.0, "rmse": approx(math.sqrt(5 / 3))}
    m = binary_metrics([0.9, 0.2, 0.6, 0.4], [1, 0, 0, 1])
    # positives 0.9, 0.4 vs negatives 0.2, 0.6: 3 of 4 pairs ordered; -(ln .9 + ln .8 + ln .4 + ln .4) / 4
    assert m["auc"] == 0.75 and m["positives"] == 2
    assert m["log_loss"] == approx(-(math.log(0.9) + math.log(0.8) + 2 * math.log(0.4)) / 4)
    assert math.isnan(binary_metrics([0.3, 0.4], [1, 1])["auc"])


def test_recall_at_k_uses_the_newest_list_strictly_before():
    recs = [Recommendation(r["ts"], r["user_id"], r["items"]) for r in RECOMMENDATIONS[:3]]
    positives = [Example.from_record(p) for p in PREDICTIONS if Example.from_record(p).positive]
    # i1 @1000 (u1): the list at 500 (the one at 1000 is not before it): hit. i5 @3000: list at 1000: hit.
    # i3 @DAY+1000 (u2): list at DAY, top 2 = i9, i8: miss. u3: no list.
    r2 = recall_at_k(recs, positives, 2)
    assert (r2.hits, r2.positives, r2.no_list) == (2, 3, 1) and r2.recall == approx(2 / 3)
    r3 = recall_at_k(recs, positives, 3)
    assert (r3.hits, r3.positives) == (3, 3) and r3.recall == 1.0
    assert math.isnan(recall_at_k([], positives, 2).recall)


def test_evaluate_overall():
    ev = evaluate(PREDICTIONS, RECOMMENDATIONS, k=2, window="day")
    assert ev.models == ["mf", "ftrl", "fused"]
    assert ev.counts == {"predictions": 7, "recommendations": 3, "prediction_records": 7, "repeated_records": 0,
                         "repeated_events": 0}
    o = ev.overall
    assert (o["examples"], o["ratings"], o["binary"]) == (7, 4, 3)
    fused, mf, ftrl = (o["models"][m] for m in ("fused", "mf", "ftrl"))
    # fused errors 0.5, 0.5, 0, 0
    assert fused["rating"]["mae"] == approx(0.25) and fused["rating"]["rmse"] == approx(math.sqrt(0.125))
    assert mf["rating"]["mae"] == approx(1.0) and mf["rating"]["rmse"] == approx(1.0)
    # ftrl errors 2, 0, 1, 0
    assert ftrl["rating"]["mae"] == approx(0.75) and ftrl["rating"]["rmse"] == approx(math.sqrt(1.25))
    # ratings as binary (>= 4): positives 5 and 4. fused 4.5, 4 vs 2.5, 1: all ordered.
    # mf 4, 3 vs 3, 2: 3 ordered pairs and a tie (half): 3.5 / 4.
    assert fused["rating"]["auc"] == 1.0 and mf["rating"]["auc"] == 0.875 and ftrl["rating"]["auc"] == 1.0
    # rescaled fused: 4.5 -> .875 (y=1), 2.5 -> .375 (0), 4 -> .75 (1), 1 -> 0 (0)
    assert fused["rating"]["log_loss"] == approx(-(math.log(0.875) + math.log(0.625) + math.log(0.75)) / 4)
    # binary: fused .7, .9 (positives) vs .4; ftrl .6, .9 vs .7: one of two pairs ordered
    assert fused["binary"]["auc"] == 1.0 and ftrl["binary"]["auc"] == 0.5 and fused["binary"]["n"] == 3
    assert fused["binary"]["log_loss"] == approx(-(math.log(0.7) + math.log(0.6) + math.log(0.9)) / 3)
    assert o["recall"] == {"k": 2, "recall": approx(2 / 3), "hits": 2, "positives": 3, "no_list": 1}


def test_evaluate_over_time():
    by_day = evaluate(PREDICTIONS, RECOMMENDATIONS, k=2, window="day").windows
    assert [w["start"] for w in by_day] == [0, DAY]
    assert [w["examples"] for w in by_day] == [5, 2]
    # day 0: fused errors .5, .5; both positives (i1, i5) hit; u3's purchase has no list
    assert by_day[0]["models"]["fused"]["rating"]["mae"] == approx(0.5)
    assert by_day[0]["recall"]["recall"] == 1.0 and by_day[0]["recall"]["no_list"] == 1
    # day 1: exact; i3 missed
    assert by_day[1]["models"]["fused"]["rating"]["mae"] == 0.0 and by_day[1]["recall"]["recall"] == 0.0
    by_count = evaluate(PREDICTIONS, RECOMMENDATIONS, k=2, window=4).windows
    assert [w["examples"] for w in by_count] == [4, 3] and [w["start"] for w in by_count] == [0, 4]


def test_windows():
    f = window_of("hour")
    assert f(0, 3_599_999) == 0 and f(0, 3_600_000) == 3_600_000
    assert [window_of("3")(i, 0) for i in range(7)] == [0, 0, 0, 3, 3, 3, 6]
    with pytest.raises(EvalError, match="hour, day, week"):
        window_of("month")


def test_report_files(tmp_path):
    ev = evaluate(PREDICTIONS, RECOMMENDATIONS, k=2, window="day", min_window_examples=2)
    paths = write_report(ev, tmp_path / "out")
    md = paths["report"].read_text()
    assert "| fused | 4 | 0.2500 | 0.3536 | 1.0000 |" in md
    assert "recall@2: **0.6667** (2 hits of 3 positives" in md
    assert "| 1970-01-02 00:00 | 2 | 0.0000 |" in md
    for name in ("mae_over_time", "auc_over_time", "recall_over_time"):
        data = paths[name].read_bytes()
        assert len(data) > 1000 and data.startswith(PNG)
        assert f"({name}.png)" in md
    metrics = orjson.loads(paths["metrics"].read_bytes())
    assert metrics["overall"]["models"]["fused"]["rating"]["mae"] == 0.25
    assert metrics["windows"][1]["models"]["mf"]["binary"]["auc"] is None  # NaN as null


def test_a_repeated_event_id_counts_once_and_the_report_says_so(tmp_path):
    # The job ran twice: the second run's records come later (higher offsets) with other scores.
    again = [{**p, "fused": p["label"], "scores": {"mf": p["label"], "ftrl": p["label"]}} for p in PREDICTIONS[:3]]
    ev = evaluate(PREDICTIONS + again + again[:1], RECOMMENDATIONS, k=2, window="day", min_window_examples=1)
    assert (ev.counts["prediction_records"], ev.counts["predictions"]) == (11, 7)
    assert (ev.counts["repeated_records"], ev.counts["repeated_events"]) == (4, 3)
    # the first prediction of each is kept: the same metrics as without the repeats
    assert ev.overall == evaluate(PREDICTIONS, RECOMMENDATIONS, k=2, window="day").overall
    md = write_report(ev, tmp_path)["report"].read_text()
    assert ("11 predictions records for 7 events: 3 event_ids came more than once (4 repeated records; the job "
            "ran twice over the same events, or an at-least-once sink repeated them); only the first of each is used."
            ) in md
    from rtrec.evaluation import summary_lines

    assert any("3 event_ids came more than once" in line for line in summary_lines(ev))
    assert "one per event_id" in write_report(evaluate(PREDICTIONS, RECOMMENDATIONS), tmp_path)["report"].read_text()


def test_windows_below_the_minimum_are_counted_marked_and_not_drawn(tmp_path):
    import matplotlib.colors as mcolors

    from rtrec.evaluation import BELOW_COLOUR, window_figure

    ev = evaluate(PREDICTIONS, RECOMMENDATIONS, k=2, window="day", min_window_examples=3)
    assert [(w["examples"], w["plotted"]) for w in ev.windows] == [(5, True), (2, False)]
    fig = window_figure(ev, "t", "MAE", {"fused": [w["models"]["fused"]["rating"]["mae"] for w in ev.windows]})
    lines, bars = fig.axes
    ys = lines.get_lines()[0].get_ydata()
    assert ys[0] == approx(0.5) and math.isnan(ys[1]), "day 1 (2 examples) is left out of the line"
    assert [r.get_height() for r in bars.patches] == [5, 2], "every window's examples are shown"
    assert [mcolors.to_hex(r.get_facecolor()) == mcolors.to_hex(BELOW_COLOUR) for r in bars.patches] == [False, True]
    assert "1 window with fewer than 3 examples" in bars.get_title(loc="left")
    md = write_report(ev, tmp_path)["report"].read_text()
    assert "| 1970-01-02 00:00 | 2 (few) |" in md and "| 1970-01-01 00:00 | 5 |" in md
    assert "1 of 2 windows have fewer than 3 examples" in md
    # none reaches the minimum: nothing to draw (the table still has them)
    none = evaluate(PREDICTIONS, RECOMMENDATIONS, k=2, window="day", min_window_examples=100)
    paths = write_report(none, tmp_path / "none")
    assert not [p for p in paths.values() if p.suffix == ".png"] and "2 of 2 windows" in paths["report"].read_text()
    # with windows of N examples the minimum is at most N: only a short last window can fall below it
    by_count = evaluate(PREDICTIONS, RECOMMENDATIONS, k=2, window=4, min_window_examples=100)
    assert [w["plotted"] for w in by_count.windows] == [True, False] and by_count.min_window_examples == 4


def test_the_minimum_is_a_setting_and_a_flag(capsys):
    from rtrec.cli import main
    from rtrec.config import ConfigError, load_config

    assert load_config().eval.min_window_examples == 100
    assert load_config(overrides=["eval.min_window_examples=0"]).eval.min_window_examples == 0
    with pytest.raises(ConfigError, match="eval.min_window_examples must not be negative"):
        load_config(overrides=["eval.min_window_examples=-1"])
    assert main(["eval", "--min-examples", "-5"]) == 2  # refused before the broker is asked
    assert "--min-examples must not be negative" in capsys.readouterr().err


def test_each_models_share_of_the_fused_prediction_overall_per_window_and_in_the_report(tmp_path):
    import random

    rnd = random.Random(3)
    recs = []
    # fused = 0.2 + 0.9 mf + 0.0 ftrl on day 0; 0.2 + 0.3 mf + 0.6 ftrl on day 1 (both score spreads equal)
    for day, (w_mf, w_ftrl) in enumerate([(0.9, 0.0), (0.3, 0.6)]):
        for i in range(60):
            mf, ftrl = rnd.choice([1, 2, 3, 4, 5]), rnd.choice([1, 2, 3, 4, 5])
            recs.append(pred(day * DAY + i, "u1", f"i{i}", "rating", 3.0, mf, ftrl, 0.2 + w_mf * mf + w_ftrl * ftrl))
    ev = evaluate(recs, [], window="day", min_window_examples=1)
    day0, day1 = (w["fusion_share"]["rating"] for w in ev.windows)
    assert day0["mf"] == approx(1.0) and day0["ftrl"] == approx(0.0, abs=1e-9)
    sd = {m: math.sqrt(sum((r["scores"][m] - sum(q["scores"][m] for q in recs[60:]) / 60) ** 2
                           for r in recs[60:]) / 60) for m in ("mf", "ftrl")}
    assert day1["ftrl"] == approx(0.6 * sd["ftrl"] / (0.3 * sd["mf"] + 0.6 * sd["ftrl"]))
    assert ev.windows[0]["fusion_share"]["binary"] is None  # (no binary examples)
    files = write_report(ev, tmp_path)
    assert files["fusion_share_rating_over_time"].read_bytes().startswith(PNG)
    assert "Share of the fused prediction (rating examples" in files["report"].read_text()
