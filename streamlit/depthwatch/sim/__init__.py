"""Local Bybit v5 public WebSocket simulator: synthetic or replayed books with ground truth.
It speaks Binance spot and USDⓈ-M futures too (depthwatch.sim.binance)."""

from depthwatch.sim.binance import FUTURES, SPOT, truth_key
from depthwatch.sim.config import (
    BinanceFault,
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
    "FUTURES",
    "SPOT",
    "BinanceFault",
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
    "truth_key",
]
