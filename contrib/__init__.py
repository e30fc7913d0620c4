"""Benchmarks, the regtest demo and their helpers; not part of the plugin."""
