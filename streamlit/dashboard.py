"""The dashboard's pages: the script Streamlit runs for every session
(streamlit/app.py serves it; tests run it with AppTest)."""

import sys
from pathlib import Path

# Running from a clone without `pip install`: make the package importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from depthwatch.app.main import main

main()
