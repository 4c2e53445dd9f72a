"""Run the prepare flow in this process, for tests that kill or race whole runs.

Usage::

    python tests/scripts/run_prepare.py CONFIG.json [--rehash]

``CONFIG.json`` is the mapping that :func:`imgprep.config.load_config` validates.
The flow's summary is printed to stdout as one JSON line. Point ``PREFECT_API_URL``
at a Prefect server on 127.0.0.1 to skip the start of a temporary server, and set
``IMGPREP_KILL_AT`` to make the run SIGKILL itself at a crash point.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="JSON file with the run's config mapping")
    parser.add_argument(
        "--rehash", action="store_true", help="read and hash every source file again"
    )
    args = parser.parse_args()

    from flows.prepare import prepare_dataset
    from imgprep.config import load_config

    data = json.loads(Path(args.config).read_text(encoding="utf-8"))
    config = load_config(data=data)
    summary = prepare_dataset(config, rehash=args.rehash)
    print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
