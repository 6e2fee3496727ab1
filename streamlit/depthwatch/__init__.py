"""depthwatch: exact Bybit order books recorded into PostgreSQL, watched live."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("depthwatch")
except PackageNotFoundError:  # run from a clone without `pip install` (e.g. streamlit run)
    __version__ = "unknown"
