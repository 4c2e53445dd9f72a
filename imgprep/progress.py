"""Progress reporting hooks for interactive runs.

The flow reports its current step and the images it has finished; the CLI installs
a reporter that draws a progress bar. Without a reporter every call does nothing,
so scheduled runs and workers pay nothing for it.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ProgressReporter", "advance", "set_reporter", "start", "step"]


class ProgressReporter(Protocol):
    def step(self, name: str) -> None: ...

    def start(self, total_images: int) -> None: ...

    def advance(self, images: int) -> None: ...


_reporter: ProgressReporter | None = None


def set_reporter(reporter: ProgressReporter | None) -> None:
    """Install ``reporter`` for this process, or remove it with None."""
    global _reporter
    _reporter = reporter


def step(name: str) -> None:
    """Report that the run entered step ``name``."""
    if _reporter is not None:
        _reporter.step(name)


def start(total_images: int) -> None:
    """Report how many images the decode step will process."""
    if _reporter is not None:
        _reporter.start(total_images)


def advance(images: int) -> None:
    """Report that ``images`` more images were processed."""
    if _reporter is not None:
        _reporter.advance(images)
