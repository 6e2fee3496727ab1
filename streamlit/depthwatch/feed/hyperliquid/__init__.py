"""Hyperliquid: the `l2Book` (full snapshots of the top 20 levels a side, every
block) and `trades` of its perpetuals, as one venue (`hyperliquid`); each
snapshot is stored as its changes from the one before."""
