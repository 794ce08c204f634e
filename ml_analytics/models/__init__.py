"""Forecasting and risk: pure functions over arrays and dates, no I/O."""
