"""Runs a whole site pipeline (gateway and workers) as supervised local processes."""
