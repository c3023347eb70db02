"""Where a model version runs: behind one interface (start, stop, health)."""
