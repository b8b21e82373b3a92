"""Configuration: ``default.yaml`` (embedded), its typed schema and the loader."""
from config.loader import ConfigError, default_config_text, load_config, parse_override
from config.schema import VidrecConfig

__all__ = ["ConfigError", "VidrecConfig", "default_config_text", "load_config", "parse_override"]
