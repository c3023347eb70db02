"""The end-to-end test: the closed loop (drift → retrain → canary → promote) on a real stack."""
