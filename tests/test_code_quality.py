"""The codebase stays lint-clean and formatted: ruff is part of the test suite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_lint_is_clean():
    result = ruff("check", "streamlit", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    result = ruff("format", "--check", "streamlit", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_package_shadows_the_streamlit_library():
    assert not (ROOT / "streamlit" / "__init__.py").exists()


def test_mypy_is_clean():
    exe = shutil.which("mypy", path=str(Path(sys.executable).parent)) or "mypy"
    result = subprocess.run(
        [
            exe,
            "streamlit/depthwatch",
            *(f"streamlit/{s}.py" for s in ("app", "dashboard", "worker")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
