"""Flink operators: thin adapters from keyed state and timers to the logic in rtrec/ and models/."""
