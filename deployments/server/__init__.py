"""The inference server: one process serves one model version."""
