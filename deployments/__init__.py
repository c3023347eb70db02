"""The serving side: the inference server, targets, rollout strategies, the event bridge."""
