"""The `xray` command (pyproject [project.scripts]) is `python -m pipeline`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_xray_command_is_python_m_pipeline():
    exe = Path(sys.executable).parent / "xray"
    assert exe.exists(), "`pip install -e .` (make setup) installs the xray command from pyproject's [project.scripts]"
    ours = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    module = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, timeout=120)
    assert ours.returncode == module.returncode == 0, ours.stderr
    assert ours.stdout == module.stdout and "train" in ours.stdout
    bad = subprocess.run([str(exe), "no-such-command"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
