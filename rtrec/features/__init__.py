"""Declarative features (definitions.py) and the engine that runs them online and offline."""
