"""The one exception type for user-facing configuration problems."""


class ConfigError(ValueError):
    """A configuration problem, worded as what to change (never a traceback from OmegaConf)."""
