"""The per-batch core of the job, without Flink: what the stages do with one micro-batch.

:class:`rtrec.core.user.UserCore` admits a key shard's raw records, folds
them into user features, predicts, learns and recommends;
:class:`rtrec.core.item.ItemCore` folds events into item features. The Flink
operators in ``udfs/`` only load and store state, register timers and route
what these return; unit tests and benchmarks call the same code directly.
"""
