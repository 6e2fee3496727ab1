"""The dashboard's entry script: `streamlit run streamlit/app.py`.

Render's web service runs exactly this (with `--server.port $PORT --server.address
0.0.0.0`); `depthwatch up` and `depthwatch dashboard` run it too."""

import sys
from pathlib import Path

# Running from a clone without `pip install`: make the package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from depthwatch.app.main import main

main()
