"""fedlayer's Flower ServerApp: plans rounds, aggregates layer-wise, evaluates and records the run."""
