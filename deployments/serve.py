"""Serve the `manual` and `refresh` deployments of prepare-dataset without a work pool.

Run from the repository root with the project venv, against a running Prefect server::

    export PREFECT_API_URL=http://127.0.0.1:4200/api
    .venv/bin/python deployments/serve.py

The process registers `prepare-dataset/manual-served` and
`prepare-dataset/refresh-served` and runs their flow runs as child processes until it
is stopped with Ctrl+C, which pauses both deployments. Descriptions, tags, default
parameters and the refresh schedule are read from deployments/prefect.yaml, so served
and work-pool deployments behave the same.

The served names differ from the work-pool names because serving a deployment that a
work pool already owns keeps its work pool but drops its pull steps, and its runs then
crash (seen with prefect 3.9.1).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO_ROOT / "deployments" / "prefect.yaml"
# Appended to each deployment name from prefect.yaml, such as manual -> manual-served.
SERVED_SUFFIX = "-served"

__all__ = ["build_deployments", "load_deployment_specs", "main"]


def load_deployment_specs(path: Path = PREFECT_FILE) -> list[dict[str, Any]]:
    """Read the deployment entries of a prefect.yaml file.

    Raises:
        ValueError: The file has no `deployments` list.
    """
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    specs = data.get("deployments") if isinstance(data, dict) else None
    if not isinstance(specs, list) or not specs:
        raise ValueError(
            f"{path} has no `deployments` list; restore it from version control"
        )
    return specs


def _cron_schedules(spec: dict[str, Any]) -> list[Any]:
    """Convert the cron entries of a deployment's `schedules` to Prefect schedules."""
    from prefect.schedules import Cron

    schedules = []
    for entry in spec.get("schedules") or []:
        if "cron" not in entry:
            raise ValueError(
                f"deployment {spec['name']!r} has a schedule without `cron` "
                f"({entry!r}); serve.py converts only cron schedules"
            )
        schedules.append(
            Cron(
                entry["cron"],
                timezone=entry.get("timezone"),
                active=entry.get("active", True),
            )
        )
    return schedules


def build_deployments(specs: list[dict[str, Any]]) -> list[Any]:
    """Create one served deployment of prepare-dataset per entry of `specs`.

    The flow's entrypoint is recorded relative to the current directory, so call
    this from the repository root.
    """
    from flows.prepare import prepare_dataset

    deployments = []
    for spec in specs:
        deployments.append(
            prepare_dataset.to_deployment(
                name=f"{spec['name']}{SERVED_SUFFIX}",
                description=spec.get("description"),
                tags=spec.get("tags"),
                parameters=spec.get("parameters"),
                schedules=_cron_schedules(spec),
            )
        )
    return deployments


def main(argv: list[str] | None = None) -> int:
    """Serve the deployments until interrupted, and return the exit code."""
    parser = argparse.ArgumentParser(
        description="Serve the manual and refresh deployments of prepare-dataset "
        "from this process, using the definitions in deployments/prefect.yaml.",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="Maximum number of flow runs at the same time (default: no limit).",
    )
    args = parser.parse_args(argv)

    from prefect import serve
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        print(
            "error: PREFECT_API_URL is not set. A temporary Prefect server cannot "
            "run schedules; start one with `.venv/bin/prefect server start --host "
            "127.0.0.1` and run `export PREFECT_API_URL=http://127.0.0.1:4200/api`.",
            file=sys.stderr,
        )
        return 2

    # Relative paths in the config resolve against the working directory of the
    # flow run, which is this process's working directory.
    os.chdir(REPO_ROOT)
    deployments = build_deployments(load_deployment_specs())
    serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
