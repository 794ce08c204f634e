"""The forecasters, one module each (statsforecast's layout): `combination` (the default:
the global model with local members, chosen by backtest) and `prophet`; `panel`,
`global_gbm` and `local` are the combination's parts, `base` what they all share, and
`registry` the one place that knows them by name."""
