"""What the tests share that is not a fixture: stack helpers, server processes, broken model
versions, signed webhook deliveries, and waits on a condition with a deadline."""
