"""Local Bybit v5 public WebSocket simulator: synthetic or replayed books with ground truth."""

from depthwatch.sim.config import (
    ConnRecord,
    FaultKind,
    FullBookFault,
    InjectedFault,
    SimConfig,
    add_sim_arguments,
)
from depthwatch.sim.market import TruthState
from depthwatch.sim.run import SimulatorThread, run_sim
from depthwatch.sim.server import BybitSimulator

__all__ = [
    "BybitSimulator",
    "ConnRecord",
    "FaultKind",
    "FullBookFault",
    "InjectedFault",
    "SimConfig",
    "SimulatorThread",
    "TruthState",
    "add_sim_arguments",
    "run_sim",
]
