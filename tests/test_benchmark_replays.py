"""The fast search loops in benchmarks/ replay exactly what the job's core computes."""

import numpy as np

from benchmarks.affinity_search import corrected
from benchmarks.fusion_variants import RatingExamples
from benchmarks.mf_search import mf_predictions
from rtrec.config import load_config
from rtrec.datasets import movielens_events


def test_mf_search_predicts_what_the_jobs_mf_predicts():
    cfg = load_config(overrides=["text.enabled=false", "model.affinity_buckets=0"])
    job = RatingExamples.of_job(cfg, limit=3000)
    mine = mf_predictions(cfg.model, movielens_events(3000))
    np.testing.assert_allclose(mine, job.scores["mf"], atol=1e-4)


def test_affinity_search_corrects_the_blend_as_the_job_does():
    off = load_config(overrides=["text.enabled=false", "model.affinity_buckets=0"])
    blend = RatingExamples.of_job(off, limit=3000)
    on = load_config(overrides=["text.enabled=false", "model.affinity_prior=5"])
    job = RatingExamples.of_job(on, limit=3000)
    np.testing.assert_allclose(job.scores["mf"], blend.scores["mf"])  # the correction feeds nothing back
    mine = corrected(on.model, blend, len(blend.y))
    np.testing.assert_allclose(mine, job.fused, atol=1e-4)
    assert np.abs(job.fused - blend.fused).max() > 0.1
