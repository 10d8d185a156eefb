"""One module per op family; importing them fills the registry."""

from . import activation, conv, dense, misc, rnn, tensor

OP_MODULES = (activation, conv, dense, misc, rnn, tensor)
