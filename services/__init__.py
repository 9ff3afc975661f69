"""One package per process; each is wiring on the shared kernel (`tradestack`)."""
