"""Experiment drivers built on the library (the quickstart; sweeps later)."""
