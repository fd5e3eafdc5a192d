"""Options any plan can switch on: layer dropout, personal layers, a partial client model."""
