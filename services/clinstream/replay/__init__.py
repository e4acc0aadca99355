"""Replay and reprocessing tools for site engineers: replay, dead-letter re-drive, lag, version promotion."""
