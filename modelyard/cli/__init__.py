"""The `modelyard` command: the composition root, the one place allowed to wire every layer
(stack processes, flows, tasks, the serving side). Nothing below imports it."""
