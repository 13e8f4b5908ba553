"""Packaged resources: the quickstart config."""
