"""Ingest a batch of Kafka records: validate (sort.py), count each event once, set aside
the bad ones (write.py)."""
