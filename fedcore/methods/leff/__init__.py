"""LEFF: per-client windows of blocks, stand-ins (bfloat16 blocks or distilled students) for the rest."""
