"""Exports of a version as flat per-split files, read back by their consumers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import imgprep
from imgprep.export import export_version
from tests.helpers import make_config, run_flow

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def version(demo_tree: Path, tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("export-store") / "store"
    config = make_config(
        demo_tree,
        store,
        image={"height": 16, "width": 16, "color_mode": "L"},
        resample={"method": "random_over"},
    )
    run_flow(config)
    return imgprep.open_version(store)


def test_parquet_export_matches_reader(version, tmp_path: Path):
    written = export_version(version, tmp_path, "parquet")
    for split, info in written.items():
        expected = version.load(split)
        table = pq.read_table(info["path"])
        assert table.num_rows == len(expected), split
        pixels = np.stack(
            [
                np.frombuffer(value, np.uint8)
                for value in table.column("pixels").to_pylist()
            ]
        ).reshape(expected.pixels.shape)
        assert np.array_equal(pixels, expected.pixels), split
        assert table.column("label").to_pylist() == expected.labels.tolist(), split


def test_npz_export_loads_without_pickle(version, tmp_path: Path):
    written = export_version(version, tmp_path, "npz", normalize=True)
    expected = version.load("train", normalize=True)
    with np.load(written["train"]["path"], allow_pickle=False) as archive:
        assert archive["pixels"].dtype == np.float32
        assert np.array_equal(archive["pixels"], expected.pixels)
        assert archive["labels"].tolist() == expected.labels.tolist()
        assert archive["weights"].shape == (len(expected),)


def test_hf_export_loads_in_datasets(version, tmp_path: Path):
    pytest.importorskip("datasets")
    written = export_version(version, tmp_path / "hf", "hf")
    expected = version.load("val")
    # The datasets library runs in its own process with an isolated cache and no
    # network, as a consumer of the exported files would.
    script = (
        "import json, sys, numpy as np, datasets\n"
        "d = datasets.load_dataset('parquet', data_files={'val': sys.argv[1]}, "
        "split='val')\n"
        "image = d[0]['image']\n"
        "print(json.dumps({'rows': len(d), 'image': type(d.features['image']).__name__,"
        " 'label': type(d.features['label']).__name__,"
        " 'names': d.features['label'].names, 'first_label': d[0]['label'],"
        " 'first': np.asarray(image).tolist()}))\n"
    )
    env = dict(
        os.environ,
        HF_HOME=str(tmp_path / "hf-home"),
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
    )
    run = subprocess.run(
        [sys.executable, "-c", script, written["val"]["path"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert loaded["rows"] == len(expected)
    assert loaded["image"] == "Image"
    assert loaded["label"] == "ClassLabel"
    assert loaded["names"] == version.classes
    assert loaded["first_label"] == int(expected.labels[0])
    assert np.array_equal(
        np.array(loaded["first"], np.uint8), expected.pixels[0, :, :, 0]
    )
