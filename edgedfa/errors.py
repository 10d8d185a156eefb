"""The one exception type users see."""


class EdgeDFAError(ValueError):
    """Bad input: the message names the file, node, op, key or value at fault."""
