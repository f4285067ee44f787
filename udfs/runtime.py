"""Facts about the running subtask that PyFlink 2.2's thread mode cannot give directly.

In thread mode ``RuntimeContext.get_index_of_this_subtask()`` and friends call
Java methods that Flink 2.0 moved to ``getTaskInfo()``, and fail.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyflink.datastream import RuntimeContext


@dataclass(frozen=True)
class SubtaskInfo:
    index: int
    parallelism: int
    attempt: int


def subtask_info(ctx: RuntimeContext) -> SubtaskInfo:
    java = getattr(ctx, "_runtime_context", None)
    if java is not None and hasattr(java, "getTaskInfo"):
        info = java.getTaskInfo()
        return SubtaskInfo(
            int(info.getIndexOfThisSubtask()),
            int(info.getNumberOfParallelSubtasks()),
            int(info.getAttemptNumber()),
        )
    return SubtaskInfo(ctx.get_index_of_this_subtask(), ctx.get_number_of_parallel_subtasks(), ctx.get_attempt_number())
