"""Settings: ``load(path, env) -> Settings``, checked once at start-up (see ``config/SCHEMA.md``)."""

from config.loader import load
from config.settings import ConfigError, Settings

__all__ = ["ConfigError", "Settings", "load"]
