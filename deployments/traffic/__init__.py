"""How traffic reaches model versions: a stable endpoint per model."""
