"""The engine and hdl_models side by side, every integer compared: the testbench, outside the
design (as a cocotb testbench sits outside the RTL).

``driver`` sets both up for the same training steps and records the engine's integers
(the monitor); ``scoreboard`` compares them with the accelerator's; ``run`` is ``emulate``,
behind ``edgedfa emulate``. hdl_models itself holds only units and the controller.
"""

from .driver import CoSim, plan_dicts
from .run import emulate, report_json, table
from .scoreboard import compare

__all__ = ["CoSim", "compare", "emulate", "plan_dicts", "report_json", "table"]
