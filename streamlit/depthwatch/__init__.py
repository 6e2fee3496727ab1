"""depthwatch: exact order books (Bybit, Binance, Hyperliquid) recorded into
PostgreSQL, watched live."""

import os
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version() -> str:
    try:
        return version("depthwatch")
    except PackageNotFoundError:
        # Run from a clone without `pip install` (Render's services, `streamlit run`):
        # the clone's pyproject.toml says which version this is.
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


__version__ = _version()

# Arrow's allocator for every depthwatch process, set before pyarrow is first
# imported (it reads this once): the system's malloc. Parquet exports peaked
# 30-40 MB lower with it than with pyarrow's default mimalloc, and no slower
# (BENCHMARKS.md, issue 19). An ARROW_DEFAULT_MEMORY_POOL of the user's wins.
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"
os.environ.setdefault(ARROW_POOL_ENV, "system")
