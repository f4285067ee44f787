"""Gauges that Flink can read without calling into Python.

A PyFlink gauge is a Python callback; Flink evaluates it on its metrics
thread whenever the REST API or a reporter asks, and in thread mode that
thread then enters the embedded interpreter while the task threads (and the
torch worker thread) use it. That crashed the JVM here (SIGSEGV in take_gil
from the "flink-metrics" thread). A :class:`Level` instead keeps the value
in a Java counter, moved by the difference on every set, from the task thread.
"""

from __future__ import annotations


class Level:
    """A value that is set from the task thread and read by Flink as a plain Java metric."""

    __slots__ = ("_counter", "value")

    def __init__(self, group, name: str):
        self._counter = group.counter(name)
        self.value = 0

    def set(self, value: int) -> None:
        value = int(value)
        if value != self.value:
            self._counter.inc(value - self.value)
            self.value = value
