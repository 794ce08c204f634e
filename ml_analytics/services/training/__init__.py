"""Refresh product forecasts off the event loop, on the stream's clock: the trainer
decides which products to take (trainer.py), the refresher fits and stores each
(refresh.py)."""

from ml_analytics.services.training.trainer import ModelTrainer, ProductBusy

__all__ = ["ModelTrainer", "ProductBusy"]
