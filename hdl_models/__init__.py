"""The DFA training accelerator, modelled unit by unit (docs/hardware.md).

An independent implementation of docs/datapath.md: it imports edgedfa's format and
configuration types only, and computes every integer itself, so that comparing it with
the engine (the testbench ``edgedfa.cosim``, outside this package) means something.
"""
