"""One module per op family; importing them fills the registry."""

from . import activation, conv, dense, misc, rnn, tensor  # noqa: F401
