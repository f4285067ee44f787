"""``rtrec eval``: prequential quality from the job's ``predictions`` and ``recommendations`` topics.

Both topics are read from the beginning with ``isolation.level=read_committed``.
Every ``predictions`` record is one labelled example scored by every model
*before* any model learned from it (README, "The predictions topic"), so
metrics over them are prequential (test-then-train). Examples are put in
event-time order (``ts``, stable) before anything is computed.

Metrics, per model (each key of ``scores``) and for ``fused``:

- **MAE, RMSE** over *rating* examples, in rating points.
- **AUC, log-loss** over binary outcomes. Binary feedback (``click``,
  ``add_to_cart``, ``purchase`` = 1, an unconverted ``impression`` = 0) is
  used as it is, its scores being probabilities already. A *rating* counts as
  positive when ``label >= 4`` and its score is rescaled to a probability
  the way the job maps ratings onto binary units:
  ``p = clamp((score - rating_min) / (rating_max - rating_min), 0, 1)``, so
  3.0 on a 1-5 scale is 0.5 (see :func:`rescale`). AUC is unaffected by the
  rescaling (it only ranks); the log-loss of a rescaled rating is a measure
  of calibration *of that mapping*, comparable between models and over time
  rather than with a classifier's. Ratings and binary feedback are reported
  separately.
- **recall@k** of the recommendation lists, see :func:`recall_at_k`: for
  each positive interaction (a rating >= 4, or a click, add-to-cart or
  purchase) of user *u* with item *i* at event time *t*, take the newest
  top-k list (``request: "refresh"``) issued for *u* at an event time
  strictly before *t*; it is a hit if *i* is among its first ``k`` items.
  recall@k = hits / positives that had such a list; positives of users
  with no earlier list are counted apart (``no_list``), not as misses.
  Lists ranking a request's candidates (``request: "candidates"``) are not
  used.

- **Share of the fused prediction** per model (ratings and binary feedback
  apart), see :func:`fusion_shares`: the fusion's effective weights, recovered
  by least squares of ``fused`` on the models' scores, each times the spread
  of that model's scores, as a share of their sum. A model whose share stays
  near 0 adds nothing the others do not; over time it shows whether the
  fusion earns its place.
- **like**, where the records carry it (models.like): the like head's
  probability that the example is positive, fit for exactly that after the
  fusion; its AUC and log-loss (ratings: label >= 4) are reported as a last
  row, without MAE or RMSE. It is the job's answer to "will the user like
  it", where ``fused`` is its predicted rating.

Over time: the same metrics per window of event time (``--window day``,
``hour`` or ``week``; windows in UTC) or per ``N`` consecutive examples
(``--window 5000``), each window on its own (not cumulative). The plots show
the examples per window as bars under the metrics; a window with fewer than
``eval.min_window_examples`` (``--min-examples``, 100) is left out of the
metrics' lines, its bar greyed (with ``--window N`` the minimum is at most N,
so only a short last window can fall below it).

Each event is one example: if ``predictions`` holds several records with one
``event_id`` (the job ran twice over the same events, or an at-least-once sink
repeated some after a restart), the first one read is kept and the others are
counted and left out, which the report says. Every copy of an event has the
same key (its user id), so they share a partition and the first read is the
first written: the one scored before any model had learned from the event.

Writes ``report.md``, ``metrics.json`` and PNG plots to ``--output-dir``.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from rtrec.config import EvalConfig
from rtrec.labels import LabelScale
from rtrec.metrics import auc, log_loss, mae, rmse
from rtrec.records import read_record

_SCALE = LabelScale()  # (the positive threshold; scores are rescaled with the run's own bounds)
#: The like head's row of the report (the records' ``like``): a probability, so AUC and log-loss only.
LIKE = "like"
WINDOW_MS = {"hour": 3_600_000, "day": 86_400_000, "week": 7 * 86_400_000}


class EvalError(RuntimeError):
    """Nothing to evaluate, or an output that cannot be written."""


@dataclass(slots=True)
class Example:
    """One record of the predictions topic: scores per model, ``fused`` among them."""

    ts: int
    user_id: str
    item_id: str
    type: str
    label: float
    scores: dict[str, float]
    #: How much the fusion's per-user correction moved ``fused`` (None: off, or a record from before it).
    correction: float | None = None
    #: The like head's probability of a positive (None: off, or a record from before it).
    like: float | None = None

    @classmethod
    def from_record(cls, d: dict) -> Example:
        scores = {k: float(v) for k, v in (d.get("scores") or {}).items()}
        if d.get("fused") is not None:
            scores["fused"] = float(d["fused"])
        c, like = d.get("correction"), d.get("like")
        return cls(int(d["ts"]), str(d["user_id"]), str(d["item_id"]), d["type"], float(d["label"]), scores,
                   None if c is None else float(c), None if like is None else float(like))

    @property
    def is_rating(self) -> bool:
        return self.type == "rating"

    @property
    def positive(self) -> bool:
        """Rating >= 4, or a positive binary outcome (rtrec.labels.LabelScale.positive)."""
        return _SCALE.positive(self.label, self.is_rating)


@dataclass(slots=True)
class Recommendation:
    ts: int
    user_id: str
    items: list[str]


# -- pure metric helpers ---------------------------------------------------------------
def rescale(score: float, lo: float = 1.0, hi: float = 5.0) -> float:
    """A rating-scale score as a probability of "positive", clamped to [0, 1] (rtrec.labels).

    >>> rescale(3.0), rescale(5.0), rescale(0.2), rescale(4.2)
    (0.5, 1.0, 0.0, 0.8)
    """
    return LabelScale(lo, hi).probability(score)


def error_metrics(pred: Sequence[float], truth: Sequence[float]) -> dict:
    """MAE and RMSE (``nan`` when empty).

    >>> error_metrics([3.0, 4.0, 2.0], [4.0, 4.0, 4.0])
    {'n': 3, 'mae': 1.0, 'rmse': 1.2909944487358056}
    """
    if not pred:
        return {"n": 0, "mae": math.nan, "rmse": math.nan}
    return {"n": len(pred), "mae": mae(pred, truth), "rmse": rmse(pred, truth)}


def binary_metrics(probs: Sequence[float], labels: Sequence[int]) -> dict:
    """AUC and log-loss (natural log; ``nan`` when one class is missing or nothing is given).

    >>> m = binary_metrics([0.9, 0.2, 0.6, 0.4], [1, 0, 0, 1])
    >>> m["auc"], round(m["log_loss"], 6)
    (0.75, 0.540271)
    """
    if not probs:
        return {"n": 0, "positives": 0, "auc": math.nan, "log_loss": math.nan}
    return {"n": len(probs), "positives": int(sum(labels)), "auc": auc(probs, labels),
            "log_loss": log_loss(probs, labels)}


@dataclass
class Recall:
    k: int
    hits: int = 0
    positives: int = 0  # positives that had a list before them
    no_list: int = 0  # positives of users with no list before them

    @property
    def recall(self) -> float:
        return self.hits / self.positives if self.positives else math.nan


def recall_at_k(recommendations: Iterable[Recommendation], positives: Iterable[Example], k: int) -> Recall:
    """recall@k of the newest list issued strictly before each positive interaction (module docstring).

    >>> recs = [Recommendation(10, "u", ["a", "b", "c"]), Recommendation(20, "u", ["d", "e"])]
    >>> pos = [Example(15, "u", "b", "rating", 5, {}),   # list at 10 holds b in its top 2: hit
    ...        Example(20, "u", "a", "rating", 4, {}),   # list at 20 is not strictly before: list at 10, a: hit
    ...        Example(25, "u", "a", "click", 1, {}),    # list at 20: miss
    ...        Example(5, "u", "a", "rating", 5, {}),    # no list before 5
    ...        Example(30, "v", "a", "rating", 5, {})]   # user without lists
    >>> r = recall_at_k(recs, pos, k=2)
    >>> r.hits, r.positives, r.no_list, round(r.recall, 4)
    (2, 3, 2, 0.6667)
    """
    return RecommendationIndex(recommendations, k).recall(positives)


class RecommendationIndex:
    """Each user's top-k lists in event-time order, for :func:`recall_at_k` over many sets of positives."""

    def __init__(self, recommendations: Iterable[Recommendation], k: int):
        self.k = k
        self.by_user: dict[str, tuple[list[int], list[list[str]]]] = {}
        for r in sorted(recommendations, key=lambda r: r.ts):
            times, lists = self.by_user.setdefault(r.user_id, ([], []))
            times.append(r.ts)
            lists.append(r.items[:k])

    def recall(self, positives: Iterable[Example]) -> Recall:
        out = Recall(self.k)
        for e in positives:
            found = self.by_user.get(e.user_id)
            i = bisect.bisect_left(found[0], e.ts) if found else 0
            if i == 0:
                out.no_list += 1
                continue
            out.positives += 1
            if e.item_id in found[1][i - 1]:
                out.hits += 1
        return out


def window_of(window: str | int):
    """A function example (index, ts) -> window key, for ``day``/``hour``/``week`` or N examples.

    >>> f = window_of("day"); f(0, 86_399_999), f(1, 86_400_000)
    (0, 86400000)
    >>> f = window_of(2); [f(i, 0) for i in range(5)]
    [0, 0, 2, 2, 4]
    """
    if isinstance(window, int) or str(window).isdigit():
        n = int(window)
        if n < 1:
            raise EvalError("--window N needs N >= 1")
        return lambda i, _ts: i - i % n
    if window not in WINDOW_MS:
        raise EvalError(f"--window {window!r}: use hour, day, week or a number of examples")
    ms = WINDOW_MS[window]
    return lambda _i, ts: ts - ts % ms


# -- evaluation ------------------------------------------------------------------------
@dataclass
class Evaluation:
    k: int
    window: str
    models: list[str]
    overall: dict
    windows: list[dict] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    # Windows with fewer examples are not plotted (each window's "plotted" says).
    min_window_examples: int = 0


def first_per_event(predictions: Iterable[dict]) -> tuple[list[dict], int, int]:
    """The first record of each ``event_id``, in the order given; and how many records and events repeated.

    >>> kept, records, events = first_per_event([{"event_id": "a", "v": 1}, {"event_id": "b"},
    ...                                          {"event_id": "a", "v": 2}, {"event_id": "a", "v": 3}])
    >>> [d.get("v") for d in kept], records, events
    ([1, None], 2, 1)
    """
    seen: dict[str, int] = {}
    kept = []
    for d in predictions:
        eid = d["event_id"]
        if eid in seen:
            seen[eid] += 1
            continue
        seen[eid] = 1
        kept.append(d)
    repeats = [n - 1 for n in seen.values() if n > 1]
    return kept, sum(repeats), len(repeats)


def fusion_shares(examples: Sequence[Example], models: Sequence[str]) -> dict[str, float] | None:
    """Each model's share of the fused prediction's variation over ``examples``.

    The fusion is linear, ``fused = w0 + sum_m w_m * score_m`` (models.fusion),
    plus, where the records carry it, the user's attribute ``correction``
    (models.affinity), with weights that move slowly; least squares of ``fused``
    on the scores (and the correction) recovers the weights in effect over these
    examples (exactly, when they held still). A model's share is
    ``|w_m| * sd(score_m)`` over the sum of those: how much of the spread of the
    fused predictions it moves; the correction's share is reported as
    ``correction``. None when there is no fused score or too few examples to fit.

    >>> ex = [Example(i, "u", "i", "rating", 3.0, {"a": a, "b": b, "fused": 0.5 + 0.6 * a + 0.2 * b})
    ...       for i, (a, b) in enumerate([(1, 4), (2, 2), (3, 5), (4, 1), (5, 3), (2, 4), (4, 4), (1, 1)])]
    >>> {m: round(v, 3) for m, v in fusion_shares(ex, ["a", "b", "fused"]).items()}
    {'a': 0.747, 'b': 0.253}
    >>> for e, c in zip(ex, [0.2, -0.4, 0.0, 0.4, -0.2, 0.0, 0.1, -0.1]):
    ...     e.scores["fused"] += c; e.correction = c
    >>> {m: round(v, 3) for m, v in fusion_shares(ex, ["a", "b", "fused"]).items()}
    {'a': 0.62, 'b': 0.21, 'correction': 0.17}
    """
    import numpy as np

    base = [m for m in models if m != "fused"]
    rows = [e for e in examples if "fused" in e.scores and all(m in e.scores for m in base)]
    if not base or len(rows) < 2 * (len(base) + 1):
        return None
    x = np.array([[e.scores[m] for m in base] for e in rows], dtype=np.float64)
    names = list(base)
    if len(rows) >= 2 * (len(base) + 2) and all(e.correction is not None for e in rows):
        x = np.column_stack([x, [e.correction for e in rows]])
        names.append("correction")
    y = np.array([e.scores["fused"] for e in rows], dtype=np.float64)
    w = np.linalg.lstsq(np.column_stack([np.ones(len(rows)), x]), y, rcond=None)[0][1:]
    moved = np.abs(w) * x.std(axis=0)
    total = float(moved.sum())
    if not total > 0:
        return None
    return {m: float(v) / total for m, v in zip(names, moved, strict=True)}


def _metrics(examples: list[Example], recs: RecommendationIndex, models: list[str],
             rating_min: float, rating_max: float) -> dict:
    ratings = [e for e in examples if e.is_rating]
    binary = [e for e in examples if not e.is_rating]
    out: dict = {"examples": len(examples), "ratings": len(ratings), "binary": len(binary), "models": {}}
    for m in models:
        if m == LIKE:  # a probability: AUC and log-loss only
            r = [e for e in ratings if e.like is not None]
            b = [e for e in binary if e.like is not None]
            out["models"][m] = {
                "rating": {"n": len(r), "mae": math.nan, "rmse": math.nan}
                | {k2: v for k2, v in binary_metrics([e.like for e in r], [int(e.positive) for e in r]).items()
                   if k2 != "n"},
                "binary": binary_metrics([e.like for e in b], [int(e.positive) for e in b]),
            }
            continue
        r = [e for e in ratings if m in e.scores]
        b = [e for e in binary if m in e.scores]
        out["models"][m] = {
            "rating": error_metrics([e.scores[m] for e in r], [e.label for e in r])
            | {k2: v for k2, v in binary_metrics([rescale(e.scores[m], rating_min, rating_max) for e in r],
                                                 [int(e.positive) for e in r]).items() if k2 != "n"},
            "binary": binary_metrics([min(1.0, max(0.0, e.scores[m])) for e in b], [int(e.positive) for e in b]),
        }
    fused = [m for m in models if m != LIKE]
    out["fusion_share"] = {"rating": fusion_shares(ratings, fused), "binary": fusion_shares(binary, fused)}
    rec = recs.recall(e for e in examples if e.positive)
    out["recall"] = {"k": rec.k, "recall": rec.recall, "hits": rec.hits, "positives": rec.positives,
                     "no_list": rec.no_list}
    return out


def _decoded(topic: str, messages) -> list[dict]:
    """The records of one output topic (rtrec.records), failing on the first that is not one."""
    out = []
    for m in messages:
        try:
            out.append(read_record(topic, m.value()))
        except ValueError as e:
            raise EvalError(f"{m.topic()}/{m.partition()}@{m.offset()}: {e}") from None
    return out


def evaluate(predictions: Iterable[dict], recommendations: Iterable[dict], k: int = 10,
             window: str | int = "day", rating_min: float = 1.0, rating_max: float = 5.0,
             min_window_examples: int = EvalConfig.min_window_examples) -> Evaluation:
    """Every metric overall and per window, from decoded records of the two topics (in the order read).

    One example per ``event_id``: the first record of each (:func:`first_per_event`).
    """
    predictions = list(predictions)
    firsts, repeated_records, repeated_events = first_per_event(predictions)
    examples = sorted((Example.from_record(d) for d in firsts), key=lambda e: e.ts)
    recs = [Recommendation(int(d["ts"]), str(d["user_id"]), [str(i) for i in d.get("items", [])])
            for d in recommendations if d.get("request", "refresh") != "candidates"]
    index = RecommendationIndex(recs, k)
    models: list[str] = []
    for e in examples:
        for m in e.scores:
            if m not in models:
                models.append(m)
    if "fused" in models:  # fused last
        models.remove("fused")
        models.append("fused")
    if any(e.like is not None for e in examples):  # then the like head's probability
        models.append(LIKE)
    key = window_of(window)
    if isinstance(window, int) or str(window).isdigit():  # every window but the last has N examples
        min_window_examples = min(min_window_examples, int(window))
    overall = _metrics(examples, index, models, rating_min, rating_max)
    windows = []
    groups: dict[int, list[Example]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(key(i, e.ts), []).append(e)
    for start, group in groups.items():
        # Recall in a window uses every list issued before its positives, also earlier windows'.
        w = _metrics(group, index, models, rating_min, rating_max)
        w["start"] = start
        w["first_ts"], w["last_ts"] = group[0].ts, group[-1].ts
        w["plotted"] = len(group) >= min_window_examples
        windows.append(w)
    counts = {"predictions": len(examples), "recommendations": len(recs), "prediction_records": len(predictions),
              "repeated_records": repeated_records, "repeated_events": repeated_events}
    return Evaluation(k, str(window), models, overall, windows, counts, min_window_examples)


# -- report ----------------------------------------------------------------------------
def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if isinstance(x, float) else f"{x:,}"


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _window_label(ev: Evaluation, w: dict) -> str:
    if ev.window in WINDOW_MS:
        return _iso(w["start"])
    return f"#{w['start']:,}"


def window_figure(ev: Evaluation, title: str, ylabel: str, series: dict[str, list[float]]):
    """A matplotlib figure: ``series`` (one value per window) as lines over a bar chart of the examples per
    window; windows below ``ev.min_window_examples`` are left out of the lines and their bars greyed.
    None when no window has a value to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if ev.window in WINDOW_MS:
        xs = [datetime.fromtimestamp(w["start"] / 1000, UTC) for w in ev.windows]
        xlabel = f"event time (windows of one {ev.window}, UTC)"
        width = WINDOW_MS[ev.window] / 86_400_000 * 0.8  # (matplotlib's dates are in days)
    else:
        xs = [w["start"] for w in ev.windows]
        xlabel = f"examples (windows of {ev.window})"
        width = int(ev.window) * 0.8
    plotted = [w["plotted"] for w in ev.windows]
    series = {label: [v if keep else math.nan for v, keep in zip(ys, plotted, strict=True)]
              for label, ys in series.items()}
    if not any(not math.isnan(v) for ys in series.values() for v in ys):
        return None
    fig, (ax, bars) = plt.subplots(2, 1, figsize=(9, 6), dpi=100, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for label, ys in series.items():
        ax.plot(xs, ys, marker="." if len(xs) < 60 else None, linewidth=1.2, label=label)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    bars.bar(xs, [w["examples"] for w in ev.windows], width=width, align="center",  # (under the line's points)
             color=[BAR_COLOUR if p else BELOW_COLOUR for p in plotted])
    bars.set_ylabel("examples")
    bars.set_xlabel(xlabel)
    bars.grid(alpha=0.3, axis="y")
    below = plotted.count(False)
    if below:
        bars.axhline(ev.min_window_examples, color="0.4", linestyle="--", linewidth=0.8)
        bars.set_title(f"grey: {below:,} window{'s' * (below != 1)} with fewer than {ev.min_window_examples:,} "
                       "examples, left out of the lines above", fontsize="small", loc="left")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


#: Bars of the windows that are plotted, and of those with too few examples.
BAR_COLOUR, BELOW_COLOUR = "tab:blue", "0.75"


def plot(ev: Evaluation, out_dir: Path) -> list[Path]:
    """PNG plots of the per-window metrics: errors, AUC, recall@k (only those with data), see :func:`window_figure`."""
    import matplotlib.pyplot as plt

    paths = []

    def figure(name: str, title: str, ylabel: str, series: dict[str, list[float]]) -> None:
        fig = window_figure(ev, title, ylabel, series)
        if fig is None:
            return
        path = out_dir / name
        fig.savefig(path, format="png")
        plt.close(fig)
        paths.append(path)

    def series(group: str, metric: str) -> dict[str, list[float]]:
        out = {m: [w["models"][m][group][metric] for w in ev.windows] for m in ev.models}
        return {m: ys for m, ys in out.items() if any(not math.isnan(v) for v in ys)}  # (the like: no MAE)

    figure("mae_over_time.png", "Prequential MAE of ratings per window", "MAE (rating points)",
           series("rating", "mae"))
    figure("auc_over_time.png", "Prequential AUC per window (ratings: label >= 4 positive)", "AUC",
           {f"{m} (ratings)": ys for m, ys in series("rating", "auc").items()}
           | {f"{m} (binary)": ys for m, ys in series("binary", "auc").items()
              if any(not math.isnan(v) for v in ys)})
    for kind in ("rating", "binary"):
        shares = [w.get("fusion_share", {}).get(kind) for w in ev.windows]
        if any(shares):
            figure(f"fusion_share_{kind}_over_time.png",
                   f"Share of the fused prediction per model, per window ({kind} examples)", "share",
                   {m: [sh.get(m, math.nan) if sh else math.nan for sh in shares]
                    for m in dict.fromkeys(k for sh in shares if sh for k in sh)})
    figure("recall_over_time.png", f"recall@{ev.k} of the newest list before each positive, per window",
           f"recall@{ev.k}", {f"recall@{ev.k}": [w["recall"]["recall"] for w in ev.windows]})
    return paths


def repeats_line(ev: Evaluation) -> str:
    """What the report says about repeated event_ids.

    >>> ev = Evaluation(10, "day", [], {}, counts={"prediction_records": 4, "predictions": 2,
    ...                 "repeated_records": 2, "repeated_events": 1})
    >>> repeats_line(ev)
    '4 predictions records for 2 events: 1 event_id came more than once (2 repeated records; the job ran twice over the same events, or an at-least-once sink repeated them); only the first of each is used.'
    """
    c = ev.counts
    if not c.get("repeated_records"):
        return f"{c['predictions']:,} predictions records, one per event_id."
    n = c["repeated_events"]
    return (f"{c['prediction_records']:,} predictions records for {c['predictions']:,} events: {n:,} "
            f"event_id{'s' * (n != 1)} came more than once ({c['repeated_records']:,} repeated records; the job ran "
            "twice over the same events, or an at-least-once sink repeated them); only the first of each is used.")


def markdown(ev: Evaluation, source: str = "", plots: Sequence[Path] = ()) -> str:
    o = ev.overall
    lines = [
        "# rtrec prequential evaluation",
        "",
        f"{source}{ev.counts['predictions']:,} predictions ({o['ratings']:,} ratings, {o['binary']:,} binary), "
        f"{ev.counts['recommendations']:,} top-k lists. {repeats_line(ev)} Every example was scored before any "
        "model learned from it. Ratings: AUC and log-loss with label >= 4 positive and the score rescaled to "
        "(score - min) / (max - min), clamped to [0, 1]. recall@k: the newest top-k list issued for the "
        "user strictly before each positive interaction holds its item (hits / positives that had a list).",
        "",
        "## Overall",
        "",
        "| model | ratings | MAE | RMSE | AUC (≥4) | log-loss (≥4) | binary | AUC | log-loss |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for m in ev.models:
        r, b = o["models"][m]["rating"], o["models"][m]["binary"]
        lines.append(f"| {m} | {_fmt(r['n'])} | {_fmt(r['mae'])} | {_fmt(r['rmse'])} | {_fmt(r['auc'])} | "
                     f"{_fmt(r['log_loss'])} | {_fmt(b['n'])} | {_fmt(b['auc'])} | {_fmt(b['log_loss'])} |")
    lines += share_lines(o)
    rc = o["recall"]
    lines += [
        "",
        f"recall@{ev.k}: **{_fmt(rc['recall'])}** ({rc['hits']:,} hits of {rc['positives']:,} positives with an "
        f"earlier list; positives without one: {rc['no_list']:,})",
        "",
        f"## Over time (windows: {ev.window if ev.window in WINDOW_MS else ev.window + ' examples'})",
        "",
    ]
    below = sum(1 for w in ev.windows if not w["plotted"])
    if below:
        lines += [f"{below:,} of {len(ev.windows):,} windows have fewer than {ev.min_window_examples:,} examples "
                  "(eval.min_window_examples, --min-examples): the plots leave them out of their lines and grey their "
                  "bars; the table marks them.", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    fused = "fused" if "fused" in ev.models else (ev.models[-1] if ev.models else None)
    lines += [
        "",
        f"| window | examples | MAE ({fused}) | RMSE ({fused}) | AUC ({fused}, ratings) | AUC ({fused}, binary) "
        f"| recall@{ev.k} |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for w in ev.windows:
        mm = w["models"].get(fused, {"rating": {}, "binary": {}})
        lines.append(
            f"| {_window_label(ev, w)} | {w['examples']:,}{'' if w['plotted'] else ' (few)'} | "
            f"{_fmt(mm['rating'].get('mae'))} | "
            f"{_fmt(mm['rating'].get('rmse'))} | {_fmt(mm['rating'].get('auc'))} | "
            f"{_fmt(mm['binary'].get('auc'))} | {_fmt(w['recall']['recall'])} |"
        )
    return "\n".join(lines) + "\n"


def share_lines(metrics: dict) -> list[str]:
    """The report's lines on each model's share of the fused prediction (:func:`fusion_shares`)."""
    lines = []
    for kind, shares in (metrics.get("fusion_share") or {}).items():
        if shares:
            parts = ", ".join(f"{m} {v:.0%}" for m, v in sorted(shares.items(), key=lambda kv: -kv[1]))
            lines.append(f"Share of the fused prediction ({kind} examples; effective weight times spread): {parts}")
    return ["", *lines] if lines else []


def _json_safe(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, dict):
        return {str(k): _json_safe(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_json_safe(v) for v in o]
    return o


def write_report(ev: Evaluation, out_dir: str | Path, source: str = "") -> dict[str, Path]:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EvalError(f"cannot create --output-dir {out}: {e.strerror}") from None
    plots = plot(ev, out)
    report = out / "report.md"
    report.write_text(markdown(ev, source, plots))
    data = out / "metrics.json"
    data.write_bytes(orjson.dumps(_json_safe({"k": ev.k, "window": ev.window, "models": ev.models,
                                              "min_window_examples": ev.min_window_examples,
                                              "counts": ev.counts, "overall": ev.overall,
                                              "windows": ev.windows}), option=orjson.OPT_INDENT_2))
    return {"report": report, "metrics": data, **{p.stem: p for p in plots}}


def summary_lines(ev: Evaluation) -> list[str]:
    o = ev.overall
    lines = []
    for m in ev.models:
        r, b = o["models"][m]["rating"], o["models"][m]["binary"]
        parts = [f"{m:<8}"]
        if r["n"] and m == LIKE:
            parts.append(f"AUC(>=4) {_fmt(r['auc'], 3)}  log-loss {_fmt(r['log_loss'], 3)}")
        elif r["n"]:
            parts.append(f"MAE {_fmt(r['mae'], 3)}  RMSE {_fmt(r['rmse'], 3)}  AUC(>=4) {_fmt(r['auc'], 3)}")
        if b["n"]:
            parts.append(f"binary AUC {_fmt(b['auc'], 3)}  log-loss {_fmt(b['log_loss'], 3)}")
        lines.append("  ".join(parts))
    lines += share_lines(o)[1:]
    if ev.counts.get("repeated_records"):
        lines.append(repeats_line(ev))
    rc = o["recall"]
    lines.append(f"recall@{ev.k} {_fmt(rc['recall'], 3)} ({rc['hits']:,}/{rc['positives']:,}; "
                 f"{rc['no_list']:,} positives without an earlier list)")
    return lines


def run_eval(cfg, output_dir: str | Path, k: int | None = None, window: str | int = "day",
             idle_s: float = 2.0, max_s: float = 3600.0,
             min_window_examples: int | None = None) -> tuple[Evaluation, dict[str, Path]]:
    """Read both topics (read_committed, from the beginning), evaluate, write the report."""
    from rtrec import topics

    kafka = cfg.kafka
    topics.check_broker(kafka)
    window_of(window)  # a bad --window or --k fails before reading anything
    if k is not None and k < 1:
        raise EvalError("--k must be at least 1")
    start = time.perf_counter()
    preds = _decoded("predictions", topics.read_topic(kafka, kafka.predictions_topic, idle_s, max_s))
    if not preds:
        raise EvalError(
            f"no committed records in '{kafka.predictions_topic}' at {kafka.bootstrap_servers}: run the job "
            "first (`rtrec replay` then `rtrec run --bounded`), or point --set kafka.predictions_topic=... at yours"
        )
    recs = _decoded("recommendations", topics.read_topic(kafka, kafka.recommendations_topic, idle_s, max_s))
    ev = evaluate(preds, recs, k or cfg.model.top_k, window, cfg.model.rating_min, cfg.model.rating_max,
                  cfg.eval.min_window_examples if min_window_examples is None else min_window_examples)
    source = (f"From '{kafka.predictions_topic}' and '{kafka.recommendations_topic}' at {kafka.bootstrap_servers} "
              f"(read_committed, read in {time.perf_counter() - start:.1f} s): ")
    return ev, write_report(ev, cfg.resolve_path(str(output_dir)), source)
