"""LEFF: per-client windows of blocks, distilled students for the rest."""
