"""Signal engine process (DESIGN §1)."""
