"""Flink jobs: each module wires sources, operators and sinks, and nothing else."""
