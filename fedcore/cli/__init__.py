"""The `fedlayer` command: asset fetching, local simulation, run reports."""
