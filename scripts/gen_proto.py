"""Regenerate teamtalk/pb/IM/ from proto/ in a source checkout (setup.py does this on install)."""

import runpy
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
sys.argv = ["setup.py", "--version"]
runpy.run_path(str(root / "setup.py"), run_name="__main__")
