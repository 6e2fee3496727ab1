"""The collector as a plain script, for a Render background worker:
`python streamlit/worker.py` reads its settings from the environment
(DATABASE_URL, DEPTHWATCH_SYMBOLS, DEPTHWATCH_CATEGORY, DEPTHWATCH_DEPTH, ...)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from depthwatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["collect", *sys.argv[1:]]))
