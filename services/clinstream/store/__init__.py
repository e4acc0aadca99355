"""The feature store: TimescaleDB hypertables fed from the feature topics."""
