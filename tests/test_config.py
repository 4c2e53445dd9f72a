"""The config model: clear errors, overrides, and a complete default.yaml."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from imgprep.config import PrepareConfig, apply_overrides, config_hash, load_config
from imgprep.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"source": {"root": "data"}, "output": {"store": "stores/x"}}


def error_text(data: dict[str, Any], overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(data=data, overrides=overrides or [])
    return str(caught.value)


def test_unknown_key_named():
    text = error_text({**REQUIRED, "image": {"hieght": 32}})
    assert "image.hieght" in text
    assert "unknown key" in text


def test_wrong_type_names_value():
    text = error_text({**REQUIRED, "image": {"height": "tall"}})
    assert "image.height" in text
    assert "'tall'" in text


def test_impossible_value_names_allowed():
    text = error_text({**REQUIRED, "image": {"color_mode": "RGBA"}})
    assert "image.color_mode" in text
    assert "'RGBA'" in text
    assert "'RGB' or 'L'" in text


def test_missing_required_key():
    text = error_text({"source": {"root": "data"}})
    assert "output" in text
    assert "required" in text


def test_fractions_must_sum_to_one():
    text = error_text(
        {**REQUIRED, "split": {"fractions": {"train": 0.5, "val": 0.1, "test": 0.1}}}
    )
    assert "sum to 0.7" in text


def test_dict_strategy_needs_sampler():
    text = error_text(
        {**REQUIRED, "resample": {"method": "none", "sampling_strategy": {"a": 3}}}
    )
    assert "sampling_strategy" in text


def test_address_needs_dask_runner():
    text = error_text({**REQUIRED, "runner": {"address": "tcp://127.0.0.1:8786"}})
    assert "runner.type: dask" in text


def test_overrides_parse_yaml():
    data = apply_overrides(
        dict(REQUIRED),
        [
            "image.height=32",
            "resample.method=random_over",
            "resample.sampling_strategy={a: 10}",
            "dataset.name=x",
        ],
    )
    assert data["image"]["height"] == 32
    assert data["resample"]["sampling_strategy"] == {"a": 10}
    config = load_config(data=data)
    assert config.image.height == 32


def test_override_without_equals_rejected():
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["image.height"])


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_hash_ignores_store_path():
    first = load_config(data=REQUIRED)
    second = load_config(data={**REQUIRED, "output": {"store": "elsewhere"}})
    third = load_config(data={**REQUIRED, "image": {"height": 32}})
    assert config_hash(first) == config_hash(second)
    assert config_hash(first) != config_hash(third)


def _field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(_field_paths(annotation, f"{prefix}{name}."))
        else:
            paths.append(f"{prefix}{name}")
    return paths


def _lookup(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        assert isinstance(node, dict) and part in node, f"{path} missing"
        node = node[part]
    return node


def test_default_yaml_documents_every_key():
    data = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    for path in _field_paths(PrepareConfig):
        _lookup(data, path)


def test_default_yaml_values_are_defaults():
    data = yaml.safe_load((ROOT / "config" / "default.yaml").read_text())
    from_file = load_config(data=data).model_dump(mode="json")
    defaults = load_config(
        data={
            "source": {"root": data["source"]["root"]},
            "output": {"store": data["output"]["store"]},
        }
    ).model_dump(mode="json")
    assert from_file == defaults


def test_every_field_has_description():
    def check(model: type[BaseModel], prefix: str = "") -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                check(annotation, f"{prefix}{name}.")
            else:
                assert field.description, f"{prefix}{name} has no description"

    check(PrepareConfig)


def test_demo_config_loads():
    config = load_config(ROOT / "config" / "demo.yaml")
    assert config.image.color_mode == "L"


# ------------------------------------------------------------ numbers and shapes
def _number_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Return the dotted keys of every int or float field, Optional included."""
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_number_fields(annotation, f"{prefix}{name}."))
        elif _is_number(annotation):
            keys.append(f"{prefix}{name}")
    return keys


def _is_number(annotation: Any) -> bool:
    """Tell whether a field type is int or float, through Optional and Annotated."""
    if annotation in (int, float):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_number(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return len(members) == 1 and _is_number(members[0])
    return False


def _nested(key: str, value: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"source": {"root": "data"}, "output": {"store": "s"}}
    *sections, leaf = key.split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
    node[leaf] = value
    return data


def test_number_fields_found():
    keys = _number_fields(PrepareConfig)
    assert "image.height" in keys
    assert "ingest.max_rejected_fraction" in keys
    assert "runner.workers" in keys
    assert len(keys) >= 15


@pytest.mark.parametrize("key", _number_fields(PrepareConfig))
def test_boolean_rejected_for_number(key: str):
    text = error_text(_nested(key, True))
    assert f"{key} (got True): expected" in text
    assert "not a boolean" in text


@pytest.mark.parametrize(
    ("key", "value", "located"),
    [
        ("image.background", [255, True, 255], "image.background (got [255, True"),
        ("normalize.robust_percentiles", [False, 99.0], "robust_percentiles (got"),
        ("split.fractions", {"train": True}, "split.fractions.train (got True)"),
    ],
)
def test_boolean_rejected_in_containers(key: str, value: Any, located: str):
    text = error_text(_nested(key, value))
    assert located in text


def test_boolean_rejected_in_strategy_counts():
    data = _nested("resample.sampling_strategy", {"a": True, "b": 5})
    data["resample"]["method"] = "random_over"
    text = error_text(data)
    assert "resample.sampling_strategy.a (got True)" in text
    assert "not a boolean" in text
    assert "sampling_strategy.b" not in text


@pytest.mark.parametrize(
    "override",
    [
        "image.height=true",
        "image.width=yes",
        "output.rows_per_shard=on",
        "ingest.decode_timeout_s=false",
        "profile.beta=no",
    ],
)
def test_boolean_override_rejected(override: str):
    key = override.partition("=")[0]
    text = error_text(dict(REQUIRED), [override])
    assert f"{key} (got " in text
    assert "not a boolean" in text


def test_numbers_still_accepted():
    config = load_config(
        data=REQUIRED,
        overrides=["image.height=32", "profile.beta=0.5", "ingest.decode_timeout_s=5"],
    )
    assert config.image.height == 32
    assert config.profile.beta == 0.5
    assert config.ingest.decode_timeout_s == 5.0


def test_short_background_names_shape():
    text = error_text(dict(REQUIRED), ["image.background=[1,2]"])
    assert "image.background (got [1, 2]): give three integers" in text
    assert "missing" not in text


def test_long_percentiles_name_shape():
    text = error_text({**REQUIRED, "normalize": {"robust_percentiles": [1, 2, 3]}})
    assert "normalize.robust_percentiles (got [1, 2, 3]): give two" in text


def test_bad_strategy_is_one_line():
    text = error_text(dict(REQUIRED), ["resample.sampling_strategy=bogus"])
    lines = text.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("  resample.sampling_strategy (got 'bogus'): use auto")
    assert "not minority, not majority, all, majority" in lines[1]
    assert "mapping of class" in lines[1]
    assert "literal[" not in text
    assert "constrained" not in text


def test_strategy_count_error_names_class():
    data = {**REQUIRED, "resample": {"method": "smote", "sampling_strategy": {"a": -1}}}
    text = error_text(data)
    assert "resample.sampling_strategy.a (got -1):" in text
    assert "use auto" not in text


def test_value_error_prefix_removed():
    text = error_text(
        {**REQUIRED, "split": {"fractions": {"train": 0.5, "val": 0.1, "test": 0.1}}}
    )
    assert "Value error" not in text
    assert "sum to 0.7" in text


def test_null_value_shown():
    text = error_text({**REQUIRED, "source": {"root": None}})
    assert "source.root (got None):" in text


def test_unknown_fraction_key_named():
    text = error_text({**REQUIRED, "split": {"fractions": {"tst": 1.0}}})
    assert "split.fractions (got key 'tst'):" in text
    assert "[key]" not in text


def test_section_given_as_value():
    text = error_text({**REQUIRED, "image": 3})
    assert "image (got 3): expected a section" in text
    assert "ImageSettings" not in text


# ------------------------------------------------------------------- paths
def test_store_path_is_file(tmp_path: Path):
    target = tmp_path / "storefile"
    target.write_text("x")
    text = error_text({**REQUIRED, "output": {"store": str(target)}})
    assert f"output.store (got '{target}')" in text
    assert "is a file, not a folder" in text
    assert "set output.store" in text


def test_store_parent_is_file(tmp_path: Path):
    target = tmp_path / "storefile"
    target.write_text("x")
    text = error_text({**REQUIRED, "output": {"store": str(target / "inner")}})
    assert f"because {target} is a file" in text


def test_store_path_new_or_folder(tmp_path: Path):
    for store in (tmp_path, tmp_path / "new" / "store"):
        config = load_config(data={**REQUIRED, "output": {"store": str(store)}})
        assert config.output.store == str(store)


def test_config_path_is_folder(tmp_path: Path):
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_config(tmp_path)


def test_json_schema_keeps_bounds():
    def keys(node: Any) -> set[str]:
        if isinstance(node, dict):
            return set(node).union(*(keys(value) for value in node.values()))
        if isinstance(node, list):
            return set().union(*(keys(value) for value in node))
        return set()

    schema = PrepareConfig.model_json_schema()
    workers = schema["$defs"]["RunnerSettings"]["properties"]["workers"]
    assert {"type": "integer", "minimum": 1, "maximum": 1024} in workers["anyOf"]
    assert not keys(schema) & {"ge", "gt", "le", "lt"}


def test_sampling_strategy_integer_class_keys():
    config = load_config(
        data={
            "dataset": {"name": "digits"},
            "source": {"root": "/data/digits"},
            "output": {"store": "/data/digits-store"},
            "resample": {"method": "random_over", "sampling_strategy": {0: 10, 7: 4}},
        }
    )
    assert config.resample.sampling_strategy == {"0": 10, "7": 4}
