"""ml-analytics: event-driven inventory forecasting and stockout-risk alerts."""

from importlib.metadata import PackageNotFoundError, version

SERVICE_NAME = "ml-analytics"

try:
    __version__ = version("ml-analytics")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
