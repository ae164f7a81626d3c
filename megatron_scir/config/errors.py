"""The user-error base class, and the configuration error.

Every problem a user can fix (a config key, a data file, a checkpoint, a Hugging Face folder)
raises a subclass of :class:`UserError`, worded as what to change. Every ``scir`` command
catches ``UserError`` once and prints ``scir <command>: error: <message>`` with exit status 2 and
no traceback; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A problem the user fixes by changing an input; the message says what to change."""


class ConfigError(UserError):
    """A configuration problem, worded as what to change (never a traceback from OmegaConf)."""
