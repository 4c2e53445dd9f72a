"""Configuration model for a prepare run.

One pydantic model, :class:`PrepareConfig`, validates the YAML file before any image is
decoded. The same model is the parameter type of the ``prepare_dataset`` flow, so a
Prefect deployment renders it as a form. Unknown keys are rejected everywhere.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from imgprep.errors import ConfigError

__all__ = [
    "DatasetSettings",
    "ImageSettings",
    "IngestSettings",
    "NormalizeSettings",
    "OutputSettings",
    "PrepareConfig",
    "ProfileSettings",
    "ResampleSettings",
    "RunnerSettings",
    "SourceSettings",
    "SplitSettings",
    "apply_overrides",
    "config_hash",
    "folder_path_problem",
    "load_config",
]

SPLITS = ("train", "val", "test")

ResampleMethod = Literal[
    "none",
    "random_over",
    "random_under",
    "smote",
    "borderline_smote",
    "adasyn",
    "smote_tomek",
    "smote_enn",
    "class_weights",
]
OVER_SAMPLERS = {
    "random_over",
    "smote",
    "borderline_smote",
    "adasyn",
    "smote_tomek",
    "smote_enn",
}
SMOTE_FAMILY = {"smote", "borderline_smote", "adasyn", "smote_tomek", "smote_enn"}


def _integer_not_bool(value: Any) -> Any:
    # pydantic's lax mode turns True into 1, and YAML 1.1 reads yes/on as True.
    if isinstance(value, bool):
        raise PydanticCustomError(
            "bool_not_number", "expected an integer, not a boolean"
        )
    return value


def _number_not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "expected a number, not a boolean")
    return value


# A constraint given with Field() on the field itself works with these types. Inside
# a union or Optional, put it before the validator, as in
# Annotated[int, Field(ge=1), BeforeValidator(_integer_not_bool)], or the JSON
# schema of Prefect's parameter form loses the bound.
Int = Annotated[int, BeforeValidator(_integer_not_bool)]
"""An integer field that rejects booleans."""
Float = Annotated[float, BeforeValidator(_number_not_bool)]
"""A float field that rejects booleans; integers are accepted."""


def folder_path_problem(path: Path) -> str | None:
    """Return why a folder cannot be created or used at ``path``, or None.

    The returned phrase follows the path in a message, as in
    ``f"{path} {problem}"``. Only existing entries are checked, so permissions are
    left to the operation that writes.
    """
    if path.is_symlink() and not path.exists():
        return "is a broken symbolic link"
    if path.exists():
        return None if path.is_dir() else "is a file, not a folder"
    for parent in path.parents:
        if parent.exists():
            if parent.is_dir():
                return None
            return f"cannot be created because {parent} is a file, not a folder"
    return None


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DatasetSettings(_Settings):
    name: str = Field(
        "dataset",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Dataset name, used in the manifest and as the Prefect artifact key.",
    )


class TableColumns(_Settings):
    path: str = Field("path", description="Column with the image path.")
    label: str = Field("label", description="Column with the class label.")
    split: str | None = Field(
        "split", description="Column with train/val/test; optional in the table."
    )
    group: str | None = Field(
        "group",
        description="Column with a group id (patient, site); samples of one group "
        "always share a split. Optional in the table.",
    )


class LabelNormalization(_Settings):
    strip: bool = Field(
        False, description="Strip surrounding whitespace from table labels."
    )
    case: Literal["keep", "lower", "upper"] = Field(
        "keep", description="Change the case of table labels."
    )


class SourceSettings(_Settings):
    root: str = Field(
        ...,
        min_length=1,
        description="Folder with the images. Without `labels`, each subfolder is a "
        "class (and top-level train/val/test folders are the split).",
    )
    labels: str | None = Field(
        None,
        description="CSV or Parquet labels table; its paths are relative to `root`.",
    )
    columns: TableColumns = Field(default_factory=TableColumns)
    label_normalization: LabelNormalization = Field(default_factory=LabelNormalization)
    follow_symlinks: bool = Field(
        False,
        description="Follow symbolic links inside `root`. A link that resolves "
        "outside `root` is rejected either way.",
    )
    extensionless: Literal["sniff", "skip"] = Field(
        "sniff",
        description="Files without an extension: `sniff` decodes them when their "
        "bytes are an image, `skip` lists them as skipped with reason no_extension.",
    )


class ImageSettings(_Settings):
    height: Int = Field(64, ge=1, le=8192, description="Output height in pixels.")
    width: Int = Field(64, ge=1, le=8192, description="Output width in pixels.")
    color_mode: Literal["RGB", "L"] = Field(
        "RGB", description="Output colour mode: RGB (3 channels) or L (1 channel)."
    )
    dtype: Literal["uint8", "uint16"] = Field(
        "uint8",
        description="Output pixel type. uint16 keeps 16-bit sources exact and scales "
        "8-bit sources by 257.",
    )
    resize: Literal["stretch", "pad", "center_crop", "shorter_side_crop"] = Field(
        "stretch",
        description="stretch: resize to the output size, ignoring the aspect ratio. "
        "pad: fit inside and pad with `background`. center_crop: take the central "
        "region at source resolution (padding where the source is smaller). "
        "shorter_side_crop: scale the shorter side to the output, then crop the centre.",
    )
    filter: Literal["nearest", "box", "bilinear", "hamming", "bicubic", "lanczos"] = (
        Field("bilinear", description="Pillow resampling filter.")
    )
    background: tuple[Int, Int, Int] = Field(
        (255, 255, 255),
        description="RGB colour that alpha and palette transparency are composited "
        "onto, and that `pad` fills with (0-255 each).",
    )
    sixteen_bit: Literal["shift", "rescale"] = Field(
        "shift",
        description="How 16-bit sources become 8-bit when dtype is uint8: `shift` "
        "keeps the high byte (value >> 8), `rescale` maps each image's min..max to "
        "0..255. Values are never clipped. Ignored when dtype is uint16.",
    )
    wide_modes: Literal["reject", "rescale"] = Field(
        "reject",
        description="32-bit integer (I) and float (F) sources: `reject` quarantines "
        "them as unsupported_mode, `rescale` maps each image's finite min..max to "
        "the output range.",
    )
    jpeg_draft: bool = Field(
        True,
        description="Let the JPEG decoder reduce resolution while decoding when the "
        "output is at most half the source size.",
    )
    jpeg_decoder: Literal["auto", "pillow"] = Field(
        "auto",
        description="auto decodes plain RGB and gray JPEGs with simplejpeg "
        "(libjpeg-turbo), which gives Pillow's pixels about a quarter faster, and "
        "everything else with Pillow; pillow uses Pillow for every file.",
    )
    max_image_pixels: Int = Field(
        89_478_485,
        ge=1,
        description="Largest width*height accepted; larger images are quarantined as "
        "too_many_pixels before decoding.",
    )

    @field_validator("background")
    @classmethod
    def _check_background(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        for channel in value:
            if not 0 <= channel <= 255:
                raise ValueError(
                    f"background channel {channel} is outside 0..255; "
                    "give three integers such as [255, 255, 255]"
                )
        return value

    @property
    def channels(self) -> int:
        return 3 if self.color_mode == "RGB" else 1

    @property
    def shape(self) -> tuple[int, int, int]:
        """Output array shape (height, width, channels)."""
        return (self.height, self.width, self.channels)


class IngestSettings(_Settings):
    chunk_size: Int = Field(
        1024,
        ge=1,
        le=100_000,
        description="Maximum images per ingest task. Each task should carry seconds "
        "of work; fewer than 8 chunks' worth of files are cut into about 8 chunks of "
        "at least 64 files.",
    )
    max_rejected_fraction: Float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Fail the run when more than this fraction of candidate files "
        "is quarantined.",
    )
    duplicates: Literal["keep", "drop"] = Field(
        "keep",
        description="Files with identical bytes (the same sample id): `keep` ingests "
        "every copy as its own sample, in the same split, and lists the groups in the "
        "manifest; `drop` keeps the first path of each group and lists the others as "
        "duplicates, quarantining every copy when their labels differ.",
    )
    decode_timeout_s: Float = Field(
        60.0,
        gt=0,
        description="Quarantine a file as decode_timeout when decoding it takes "
        "longer than this many seconds.",
    )


class SplitSettings(_Settings):
    use_source_split: bool = Field(
        True,
        description="Use the split the source gives (train/val/test folders or the "
        "split column) when it has one.",
    )
    fractions: dict[Literal["train", "val", "test"], Float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1},
        description="Fractions for hash-based assignment; they must sum to 1.",
    )
    salt: str = Field(
        "imgprep",
        description="Salt of the split hash. Changing it reassigns every sample.",
    )

    @field_validator("fractions")
    @classmethod
    def _check_fractions(cls, value: dict[str, float]) -> dict[str, float]:
        for name, fraction in value.items():
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"split fraction {name}={fraction} is outside 0..1")
        total = sum(value.values())
        if abs(total - 1.0) > 1e-9:
            raise ValueError(
                f"split fractions {dict(value)} sum to {total:g}; they must sum to 1"
            )
        if value.get("train", 0.0) <= 0.0:
            raise ValueError(
                "split fraction train must be above 0, because normalization "
                "statistics are fitted on the training split"
            )
        return {name: value.get(name, 0.0) for name in SPLITS}


class ProfileSettings(_Settings):
    beta: Float = Field(
        0.999,
        ge=0.0,
        lt=1.0,
        description="Beta of the effective number of samples (1-beta^n)/(1-beta), "
        "Cui et al. 2019.",
    )
    minority_share: Float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="A class whose share of its split is below this is listed as a "
        "minority class.",
    )


class NormalizeSettings(_Settings):
    method: Literal[
        "minmax", "zscore", "robust", "per_image_minmax", "per_image_zscore"
    ] = Field("zscore", description="Normalization method.")
    minmax_range: Literal["0_1", "-1_1"] = Field(
        "0_1", description="Output range of minmax and robust scaling."
    )
    robust_percentiles: tuple[Float, Float] = Field(
        (1.0, 99.0),
        description="Lower and upper percentile that robust scaling clips to.",
    )
    apply: Literal["on_read", "on_write"] = Field(
        "on_read",
        description="on_read: shards keep raw pixels and the reader applies the "
        "parameters. on_write: the version also gets float32 normalized shards.",
    )

    @field_validator("robust_percentiles")
    @classmethod
    def _check_percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(
                f"robust_percentiles {list(value)} must satisfy 0 <= low < high <= 100"
            )
        return value


SamplingStrategy = (
    Literal["auto", "minority", "not minority", "not majority", "all", "majority"]
    | Annotated[float, Field(gt=0.0, le=1.0), BeforeValidator(_number_not_bool)]
    | dict[str, Annotated[int, Field(ge=0), BeforeValidator(_integer_not_bool)]]
)


class FeatureSpace(_Settings):
    kind: Literal["thumbnail", "pixels"] = Field(
        "thumbnail",
        description="Space where SMOTE-family samplers find neighbours: `thumbnail` "
        "(block-averaged images, optionally PCA-reduced) or full `pixels`.",
    )
    thumbnail_size: Int = Field(
        8, ge=1, le=256, description="Side of the square thumbnail in pixels."
    )
    pca_components: (
        Annotated[int, Field(ge=1), BeforeValidator(_integer_not_bool)] | None
    ) = Field(
        32,
        description="Reduce thumbnails to this many principal components; null keeps "
        "the thumbnail values.",
    )


class ResampleSettings(_Settings):
    method: ResampleMethod = Field(
        "none",
        description="Resampling of the training split: none, random_over, "
        "random_under, smote, borderline_smote, adasyn, smote_tomek, smote_enn, or "
        "class_weights (no data change; per-sample weights).",
    )
    sampling_strategy: SamplingStrategy = Field(
        "auto",
        description="imbalanced-learn sampling_strategy: a string such as `auto`, a "
        "float (binary problems), or a dict of class name to target count.",
    )
    k_neighbors: Int = Field(
        5, ge=1, le=100, description="Neighbours of the SMOTE family."
    )
    single_sample_class: Literal["random_over", "leave"] = Field(
        "random_over",
        description="SMOTE-family handling of a class with one sample: duplicate it "
        "by random over-sampling, or leave it as it is.",
    )
    class_weight_scheme: Literal["inverse_frequency", "effective_number"] = Field(
        "inverse_frequency",
        description="Weights for the class_weights method.",
    )
    seed: Int = Field(0, ge=0, description="Random seed of the sampler.")
    max_memory_mb: Int = Field(
        2048,
        ge=1,
        description="Fail before a SMOTE-family sampler runs when its estimated "
        "memory exceeds this many MiB.",
    )
    features: FeatureSpace = Field(default_factory=FeatureSpace)

    @field_validator("sampling_strategy", mode="before")
    @classmethod
    def _integer_class_names(cls, value: Any) -> Any:
        # YAML reads the key of {0: 10} as an integer, but class names are strings:
        # folder names such as 0..9 for digits.
        if isinstance(value, dict):
            return {
                str(key)
                if isinstance(key, int) and not isinstance(key, bool)
                else key: (count)
                for key, count in value.items()
            }
        return value

    @model_validator(mode="after")
    def _check_strategy(self) -> ResampleSettings:
        strategy = self.sampling_strategy
        if isinstance(strategy, dict) and self.method in ("none", "class_weights"):
            raise ValueError(
                f"sampling_strategy is a dict but method is {self.method!r}, which "
                "changes no counts; choose a sampler or use sampling_strategy: auto"
            )
        return self


class OutputSettings(_Settings):
    store: str = Field(..., min_length=1, description="Store directory.")
    format: Literal["parquet", "npz"] = Field("parquet", description="Shard format.")
    rows_per_shard: Int = Field(
        512, ge=1, le=1_000_000, description="Maximum images per shard object."
    )
    compression_level: Int = Field(
        1,
        ge=1,
        le=22,
        description="zstd level of Parquet shards. Level 1 wrote 64x64 RGB shards "
        "about twice as fast as level 3, 6 % larger.",
    )
    lock_timeout_s: Float = Field(
        600.0,
        ge=0.0,
        description="Seconds to wait for another writer's lock on the store.",
    )

    @field_validator("store")
    @classmethod
    def _check_store_path(cls, value: str) -> str:
        # A relative path is checked against the current directory, which is also
        # what PrepareConfig.resolved() uses by default.
        problem = folder_path_problem(Path(value).expanduser())
        if problem is not None:
            raise ValueError(
                f"the path {problem}; set output.store to a new folder or to an "
                "existing store"
            )
        return value


class RunnerSettings(_Settings):
    type: Literal["thread", "process", "dask"] = Field(
        "process",
        description="Where ingest tasks run: `thread` (one process), `process` (a "
        "local process pool), `dask` (prefect-dask).",
    )
    workers: (
        Annotated[int, Field(ge=1, le=1024), BeforeValidator(_integer_not_bool)] | None
    ) = Field(None, description="Workers; null uses the CPU count.")
    address: str | None = Field(
        None,
        description="Scheduler address of an existing Dask cluster, such as "
        "tcp://127.0.0.1:8786. Without it, `dask` starts a local cluster.",
    )

    @model_validator(mode="after")
    def _check_address(self) -> RunnerSettings:
        if self.address is not None and self.type != "dask":
            raise ValueError(
                f"runner.address is set to {self.address!r} but runner.type is "
                f"{self.type!r}; set runner.type: dask or remove the address"
            )
        return self


class PrepareConfig(_Settings):
    """Everything a prepare run needs, validated before any image is decoded."""

    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    source: SourceSettings
    image: ImageSettings = Field(default_factory=ImageSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    split: SplitSettings = Field(default_factory=SplitSettings)
    profile: ProfileSettings = Field(default_factory=ProfileSettings)
    normalize: NormalizeSettings = Field(default_factory=NormalizeSettings)
    resample: ResampleSettings = Field(default_factory=ResampleSettings)
    output: OutputSettings
    runner: RunnerSettings = Field(default_factory=RunnerSettings)

    def resolved(self, base: Path | None = None) -> PrepareConfig:
        """Return a copy whose relative paths are made absolute against ``base``."""
        base = (base or Path.cwd()).resolve()

        def absolute(value: str | None) -> str | None:
            if value is None:
                return None
            path = Path(value).expanduser()
            return str(path if path.is_absolute() else (base / path).resolve())

        source = self.source.model_copy(
            update={
                "root": absolute(self.source.root),
                "labels": absolute(self.source.labels),
            }
        )
        output = self.output.model_copy(update={"store": absolute(self.output.store)})
        return self.model_copy(update={"source": source, "output": output})


_SHAPE_HINTS = {
    "image.background": "give three integers 0-255 such as [255, 255, 255]",
    "normalize.robust_percentiles": "give two percentiles [low, high] such as "
    "[1.0, 99.0]",
}
_STRATEGY_KEY = "resample.sampling_strategy"
_STRATEGY_HINT = (
    "use auto, minority, not minority, not majority, all, majority, a float in "
    "(0, 1] (two classes only) or a mapping of class name to sample count"
)
_ABSENT = object()


def _lookup(data: Mapping[str, Any], loc: Sequence[Any]) -> Any:
    """Return the value at ``loc`` in the raw config data, or ``_ABSENT``."""
    node: Any = data
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list | tuple) and isinstance(part, int):
            if not 0 <= part < len(node):
                return _ABSENT
            node = node[part]
        else:
            return _ABSENT
    return node


def _dotted(loc: Sequence[Any]) -> str:
    """Join a pydantic location as ``section.key[index]``."""
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += f".{part}" if key else str(part)
    return key or "(top level)"


def _error_message(item: Mapping[str, Any]) -> str:
    """Reword pydantic's message of one error for a config file author."""
    kind = item["type"]
    if kind == "extra_forbidden":
        return "unknown key; check the spelling against config/default.yaml"
    if kind == "missing":
        return "required key is missing"
    if kind == "model_type":
        return "expected a section of keys, not a single value; see config/default.yaml"
    if kind == "dict_type":
        return "expected a mapping of keys to values"
    if kind in ("value_error", "assertion_error"):
        cause = item.get("ctx", {}).get("error")
        if cause is not None:
            return str(cause)
    return str(item["msg"])


def _format_item(item: Mapping[str, Any], data: Mapping[str, Any]) -> str | None:
    """Format one error as an indented line, or return None to leave it out."""
    loc = tuple(item["loc"])
    value: Any = _ABSENT if item["type"] == "missing" else item.get("input", _ABSENT)
    message = _error_message(item)
    field = ".".join(str(part) for part in loc[:2])

    if field in _SHAPE_HINTS and item["type"] != "value_error":
        # An index error of a tuple names one position, so the line shows the whole
        # value and its expected shape instead.
        loc, value, message = loc[:2], _lookup(data, loc[:2]), _SHAPE_HINTS[field]
    elif field == _STRATEGY_KEY and len(loc) > 2:
        # Each member of the union reports its own error. A mapping gets the errors
        # of its entries, and anything else one line with every allowed form.
        value = _lookup(data, loc[:2])
        if not isinstance(value, Mapping):
            loc, message = loc[:2], _STRATEGY_HINT
        elif len(loc) > 3:
            loc, value = (*loc[:2], *loc[3:]), item.get("input", _ABSENT)
        else:
            return None

    if loc and loc[-1] == "[key]":
        return f"  {_dotted(loc[:-2])} (got key {loc[-2]!r}): {message}"
    if value is _ABSENT:
        got_text = ""
    elif item["type"] == "value_error" and isinstance(value, Mapping):
        # Messages of section validators name the values they check.
        got_text = ""
    else:
        got_text = f" (got {value!r})"
    return f"  {_dotted(loc)}{got_text}: {message}"


def _format_error(error: ValidationError, data: Mapping[str, Any]) -> str:
    lines: list[str] = []
    for item in error.errors():
        line = _format_item(item, data)
        if line is not None and line not in lines:
            lines.append(line)
    return "invalid configuration:\n" + "\n".join(lines)


def _validate(data: Mapping[str, Any]) -> PrepareConfig:
    try:
        return PrepareConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_error(error, data)) from None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a config mapping.

    Values are parsed as YAML, so ``image.height=32`` gives an integer and
    ``resample.sampling_strategy={a: 10}`` gives a mapping.
    """
    result = copy.deepcopy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"invalid override {override!r}; use key.sub=value, "
                "for example image.height=32"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as error:
            raise ConfigError(
                f"invalid override value in {override!r}: {error}"
            ) from None
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"invalid override {override!r}: {part!r} is a value, not a section"
                )
            node = child
        node[parts[-1]] = value
    return result


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    data: Mapping[str, Any] | None = None,
) -> PrepareConfig:
    """Read, override and validate a config, resolving paths against its folder.

    Relative paths in a file are resolved against the current directory, which is
    where the README's commands run.
    """
    if data is None:
        if path is None:
            raise ConfigError("no configuration given; pass --config FILE")
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except IsADirectoryError:
            raise ConfigError(
                f"config path {file} is a folder, not a file; pass a YAML file "
                "such as config/default.yaml"
            ) from None
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"config file {file} is not UTF-8 text ({error.reason} at byte "
                f"{error.start}); pass a YAML file"
            ) from None
        except OSError as error:
            raise ConfigError(
                f"reading config file {file} failed: {error.strerror or error}; "
                "check that it exists and is readable"
            ) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(
                f"config file {file} is not valid YAML: {error}"
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {file} must contain a mapping of sections, "
                f"got {type(loaded).__name__}"
            )
        data = loaded
    merged = apply_overrides(dict(data), overrides)
    return _validate(merged).resolved()


def config_hash(config: PrepareConfig) -> str:
    """Return the sha256 of the canonical JSON of ``config`` without the store path.

    The store path is left out because it is where the manifest lives, so two stores
    built from the same sources and settings get the same hash.
    """
    payload = config_for_manifest(config)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_for_manifest(config: PrepareConfig) -> dict[str, Any]:
    """Return the config as JSON data, without the store path."""
    payload = config.model_dump(mode="json")
    payload["output"].pop("store", None)
    return payload
