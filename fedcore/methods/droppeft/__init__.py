"""DropPEFT: a per-device bandit over layer-dropout configurations."""
