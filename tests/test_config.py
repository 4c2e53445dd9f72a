"""The config model: clear errors, overrides, and a complete default.yaml."""

from __future__ import annotations

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
