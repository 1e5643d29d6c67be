"""Shared plumbing for benchmarks: every benchmark prints its figures and saves them as
``bench-results/<name>.json`` with the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(os.environ.get("FOREWARN_BENCH_DIR", "bench-results"))


def machine() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }


def write_result(name: str, figures: dict[str, Any]) -> Path:
    """Print ``figures`` and save them with a timestamp and machine facts."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": machine(), **figures}
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    print(json.dumps(record, indent=2))
    print(f"saved {path}")
    return path
