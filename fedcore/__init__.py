"""fedcore: the machine learning shared by fedlayer's ServerApp and ClientApp (no app imports here)."""

#: the same as [project].version in pyproject.toml (a test keeps them equal); known without installing,
#: so a source checkout on a device's own Python reports it too
__version__ = "0.1.0"
