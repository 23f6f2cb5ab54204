"""Imported first by every tool: in a Python without the project's environment, one line saying how
to get it instead of a ModuleNotFoundError."""

import importlib.util
import sys

_missing = [m for m in ("als_det", "torch") if importlib.util.find_spec(m) is None]
if _missing:
    print(
        f"error: {sys.executable} has no {' or '.join(_missing)}: run `make setup`, then "
        "`source .venv/bin/activate`",
        file=sys.stderr,
    )
    sys.exit(2)
