"""fedcore: the machine learning shared by fedlayer's ServerApp and ClientApp (no app imports here)."""
