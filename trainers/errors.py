"""The one exception type users see: a bad input, with what to fix.

Entry points catch it, print a single ``error: ...`` line and exit with code 2, the usual
argparse convention for "you called me wrong".
"""


class ConfigError(ValueError):
    """A user-facing error in a config, a flag, a path or the data. The message says how to fix it."""


EXIT_BAD_INPUT = 2
