"""Researcher exports of the feature store: Parquet or CSV with a data dictionary from the catalogue."""
