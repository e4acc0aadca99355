"""The small shared core: settings, constants, Avro contracts, topics, Kafka and database clients."""
