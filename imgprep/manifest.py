"""The manifest: one JSON document per version that says what the version contains.

A manifest lists every object and file of its version with size and sha256, so a
version can be verified without trusting anything else in the store. It is read as
untrusted input: :func:`parse_manifest` validates it against :class:`Manifest`,
which accepts object paths only of the form ``objects/xx/<sha256>.<ext>`` and file
names only without folders, so no manifest can point outside its store.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imgprep.errors import CorruptObjectError

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "FileEntry",
    "Manifest",
    "ObjectEntry",
    "ShardEntry",
    "parse_manifest",
]

MANIFEST_SCHEMA_VERSION = 1

ObjectPath = Field(pattern=r"^objects/[0-9a-f]{2}/[0-9a-f]{64}\.[a-z0-9]{1,8}$")
Sha256 = Field(pattern=r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectEntry(_Strict):
    """A content-addressed object referenced by the version."""

    path: str = ObjectPath
    sha256: str = Sha256
    bytes: int = Field(ge=0)


class ShardEntry(ObjectEntry):
    """A pixel shard: its rows and how many of each class and split it holds."""

    kind: Literal["samples", "synthetic", "normalized"]
    format: Literal["parquet", "npz"]
    rows: int = Field(ge=0)
    class_counts: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="split -> class -> rows"
    )


class FileEntry(_Strict):
    """A plain file in the version's folder, such as report.html."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$")
    sha256: str = Sha256
    bytes: int = Field(ge=0)


class Manifest(BaseModel):
    """Schema of ``versions/NNNNNN/manifest.json``.

    Sections whose content is descriptive (profile, normalization, resample,
    source summary) are free-form JSON objects; everything that locates data is
    typed and validated.
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1]
    dataset: str
    version: int = Field(ge=1)
    parent: int | None = Field(default=None, ge=1)
    created: str
    flow_run_id: str | None = None
    config: dict[str, Any]
    config_resolved: dict[str, Any]
    config_hash: str = Sha256
    libraries: dict[str, str]
    pixel: dict[str, Any]
    shard_schema: dict[str, str]
    classes: list[str]
    counts: dict[str, Any]
    source: dict[str, Any]
    split: dict[str, Any]
    profile: dict[str, Any]
    normalization: dict[str, Any]
    resample: dict[str, Any]
    refresh: dict[str, Any]
    shards: list[ShardEntry]
    objects: dict[str, ObjectEntry]
    files: list[FileEntry]

    def all_objects(self) -> list[ObjectEntry]:
        """Return every object the version references: shards first, then tables."""
        return [*self.shards, *self.objects.values()]


def parse_manifest(data: dict[str, Any], where: str = "") -> Manifest:
    """Validate a manifest mapping.

    Raises
    ------
    CorruptObjectError
        When the mapping does not match the schema; the message names the key.
    """
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != MANIFEST_SCHEMA_VERSION:
        raise CorruptObjectError(
            f"manifest {where} has schema_version {version!r}; this imgprep reads "
            f"version {MANIFEST_SCHEMA_VERSION}",
            where,
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}"
            for item in error.errors()[:5]
        )
        raise CorruptObjectError(
            f"manifest {where} does not match the manifest schema: {problems}", where
        ) from None
