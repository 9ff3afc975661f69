"""Market-data ingest processes: `python -m ingest.ticker24h|orderbook|candles` (wiring only)."""
