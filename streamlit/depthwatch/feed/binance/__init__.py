"""Binance: spot (`binance`) and USDⓈ-M futures (`binance-futures`), as venues
(feed/exchange.py). Each book is the diff depth stream started from a REST
snapshot, stitched by Binance's "How to manage a local order book correctly"
(`sync.py`); the rest of depthwatch sees only records."""
