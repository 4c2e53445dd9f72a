"""Hold a store's writer lock for a while, as a second writer would.

Usage::

    python tests/scripts/hold_lock.py STORE SECONDS [--orphan-child]

Prints ``locked`` followed by the holder record as JSON once the lock is taken,
then sleeps for ``SECONDS`` and releases it. With ``--orphan-child`` the process
forks a child that inherits the locked file descriptor, prints ``child PID`` and
exits at once without releasing the lock: the child keeps the ``flock`` for
``SECONDS`` while the holder record names the dead parent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT_ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="store folder whose lock is taken")
    parser.add_argument("seconds", type=float, help="how long to hold the lock")
    parser.add_argument(
        "--orphan-child",
        action="store_true",
        help="leave the lock to a forked child and exit at once",
    )
    args = parser.parse_args()

    from imgprep.store import Store

    with Store(args.store).lock(timeout_s=30) as holder:
        print("locked", json.dumps(holder), flush=True)
        if args.orphan_child:
            child = os.fork()
            if child == 0:
                time.sleep(args.seconds)
                os._exit(0)
            print("child", child, flush=True)
            # Exit without leaving the block, so the record and the flock stay.
            os._exit(0)
        time.sleep(args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
