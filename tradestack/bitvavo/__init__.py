"""The Bitvavo venue adapter: REST and WebSocket clients, the local order book, parsing of the
exchange's JSON into our messages, and the ingest feeds and write path built on them."""
