"""The native local stack: single-node Kafka (KRaft) and PostgreSQL 15 + TimescaleDB, without Docker."""
