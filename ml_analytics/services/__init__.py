"""Use cases: the plain functions that tie events, models and storage together."""
