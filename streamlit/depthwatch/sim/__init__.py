"""Local Bybit v5 public WebSocket simulator: synthetic or replayed books with ground truth.
It speaks Binance spot and USDⓈ-M futures (depthwatch.sim.binance) and Hyperliquid
(depthwatch.sim.hyperliquid) too."""

from depthwatch.sim.binance import FUTURES, SPOT, truth_key
from depthwatch.sim.config import (
    BinanceFault,
    ConnRecord,
    FaultKind,
    FullBookFault,
    HyperliquidFault,
    InjectedFault,
    SimConfig,
    add_sim_arguments,
)
from depthwatch.sim.hyperliquid_book import VENUE as HYPERLIQUID
from depthwatch.sim.market import TruthState
from depthwatch.sim.run import SimulatorThread, run_sim
from depthwatch.sim.server import BybitSimulator

__all__ = [
    "FUTURES",
    "HYPERLIQUID",
    "SPOT",
    "BinanceFault",
    "BybitSimulator",
    "ConnRecord",
    "FaultKind",
    "FullBookFault",
    "HyperliquidFault",
    "InjectedFault",
    "SimConfig",
    "SimulatorThread",
    "TruthState",
    "add_sim_arguments",
    "run_sim",
    "truth_key",
]
