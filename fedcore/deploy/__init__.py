"""Operator tooling for a deployed federation: ``fedlayer deploy ...``."""
