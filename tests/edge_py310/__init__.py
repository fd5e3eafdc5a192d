"""What an edge device runs on its own Python 3.10: no torch, no Flower, only the tools' own packages.

.ci/py310-client-check runs these on a 3.10 interpreter (pytest --noconftest); the main suite runs them too.
"""
