"""Universe selector process (DESIGN §1)."""
