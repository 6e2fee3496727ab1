"""Local Bybit v5 public WebSocket simulator: synthetic or replayed books with ground truth."""

from depthwatch.sim.market import TruthState
from depthwatch.sim.server import (
    BybitSimulator,
    ConnRecord,
    FaultKind,
    InjectedFault,
    SimConfig,
    SimulatorThread,
    add_sim_arguments,
    run_sim,
)

__all__ = [
    "BybitSimulator",
    "ConnRecord",
    "FaultKind",
    "InjectedFault",
    "SimConfig",
    "SimulatorThread",
    "TruthState",
    "add_sim_arguments",
    "run_sim",
]
