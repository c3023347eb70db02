"""What the tests share that is not a fixture: stack helpers, server processes, broken model
versions, signed webhook deliveries, a prober of stable endpoints, and waits on a condition
with a deadline."""
