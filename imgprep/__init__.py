"""imgprep: prepare image datasets for training as versioned, auditable shards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["DatasetVersion", "__version__", "open_version"]

if TYPE_CHECKING:
    from imgprep.reader import DatasetVersion, open_version


def __getattr__(name: str) -> Any:
    # The reader pulls in pyarrow and numpy; import it on first use so that
    # `import imgprep` stays cheap for the CLI and for workers.
    if name in ("open_version", "DatasetVersion"):
        from imgprep import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'imgprep' has no attribute {name!r}")
