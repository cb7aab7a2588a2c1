"""Persistence: models, engine and migrations, and the evidence log."""
