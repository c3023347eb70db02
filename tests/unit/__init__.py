"""Unit tests: pure logic with plain values in and a verdict out, and behavioural tests of the
demo model; no servers (`make test-fast` runs them)."""
