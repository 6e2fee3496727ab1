"""depthwatch: exact Bybit order books recorded into PostgreSQL, watched live."""

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
