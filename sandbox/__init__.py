"""Bitvavo-compatible sandbox exchange: a pure-Python engine (``sandbox.engine``) and its server."""
