"""Executor process (DESIGN §1)."""
