"""Keras front end, loading: every bad input is an InputError with one clear line."""

from __future__ import annotations

import json
import logging
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

from bnfold.errors import InputError  # noqa: E402
from bnfold.foldlog import Outcome  # noqa: E402
from bnfold.frontends import keras as frontend  # noqa: E402
from bnfold.testing import run_python_quietly  # noqa: E402

pytestmark = pytest.mark.keras
L = keras.layers
REPO = Path(__file__).resolve().parents[1]


def small_model(with_lambda: bool = False) -> Any:
    inputs = keras.Input((4,), name="x")
    hidden = L.BatchNormalization(name="bn")(L.Dense(3, name="lin")(inputs))
    if with_lambda:
        hidden = L.Lambda(lambda t: t * 2.0, name="double")(hidden)
    return keras.Model(inputs, L.ReLU(name="relu")(hidden))


@pytest.fixture(scope="session")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keras_load")
    plain, with_lambda = small_model(), small_model(with_lambda=True)
    paths = {}
    for suffix in (".keras", ".h5"):
        paths[f"plain{suffix}"] = folder / f"plain{suffix}"
        plain.save(paths[f"plain{suffix}"])
        paths[f"lambda{suffix}"] = folder / f"lambda{suffix}"
        with_lambda.save(paths[f"lambda{suffix}"])
    paths["weights.h5"] = folder / "only.weights.h5"
    plain.save_weights(paths["weights.h5"])
    return paths


def assert_one_line_error(path: Path, match: str, **kwargs: Any) -> InputError:
    with pytest.raises(InputError, match=match) as caught:
        frontend.load_keras_model(path, **kwargs)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 3
    return caught.value


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(tmp_path / "nothing.h5", "no such file")


def test_not_a_keras_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.pb"
    path.write_bytes(b"x")
    assert_one_line_error(path, "not a Keras model file")


def test_text_file_named_h5(tmp_path: Path) -> None:
    path = tmp_path / "model.h5"
    path.write_text("hello")
    assert_one_line_error(path, "not an HDF5 file")


def test_garbage_keras_file(tmp_path: Path) -> None:
    path = tmp_path / "model.keras"
    path.write_bytes(os.urandom(256))
    assert_one_line_error(path, "not a valid .keras file")


def test_truncated_keras_file(saved: dict[str, Path], tmp_path: Path) -> None:
    data = saved["plain.keras"].read_bytes()
    path = tmp_path / "truncated.keras"
    path.write_bytes(data[: len(data) // 2])
    assert_one_line_error(path, "not a valid .keras file")


def test_zip_without_config(tmp_path: Path) -> None:
    path = tmp_path / "empty.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "no model here")
    assert_one_line_error(path, "no config.json")


def test_weights_only_h5(saved: dict[str, Path]) -> None:
    assert_one_line_error(saved["weights.h5"], "weights only")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_is_refused_in_safe_mode_naming_the_layer(
    suffix: str, saved: dict[str, Path]
) -> None:
    error = assert_one_line_error(saved[f"lambda{suffix}"], "'double'")
    assert "--allow-unsafe" in str(error)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_loads_and_folds_with_allow_unsafe(
    suffix: str, saved: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="bnfold"):
        model = frontend.load_keras_model(saved[f"lambda{suffix}"], allow_unsafe=True)
    assert any(
        "allow-unsafe" in record.getMessage() and "'double'" in record.getMessage()
        for record in caplog.records
    )
    folded, entries = frontend.fold_keras_model(model)
    assert [(entry.name, entry.outcome) for entry in entries] == [
        ("bn", Outcome.FOLDED_INTO_PREVIOUS)
    ]
    feeds = {"x": np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)}
    expected = frontend.predict_keras(model, feeds)["relu"]
    np.testing.assert_allclose(
        frontend.predict_keras(folded, feeds)["relu"], expected, rtol=1e-5, atol=1e-6
    )


def test_custom_layer_class_is_named(saved: dict[str, Path], tmp_path: Path) -> None:
    with zipfile.ZipFile(saved["plain.keras"]) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    for layer in config["config"]["layers"]:
        if layer["name"] == "relu":
            layer["class_name"], layer["module"], layer["registered_name"] = (
                "MyScale",
                "my_pkg",
                "my_pkg>MyScale",
            )
    members["config.json"] = json.dumps(config).encode()
    path = tmp_path / "custom.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    error = assert_one_line_error(path, "layer 'relu' is the custom class my_pkg>MyScale")
    assert "--allow-unsafe only runs code stored in the file" in str(error)
    assert "bnfold.fold(" in str(error)


def rewrite_h5_config(source: Path, target: Path, config: dict[str, Any]) -> Path:
    target.write_bytes(source.read_bytes())
    with h5py.File(target, "r+") as h5:
        h5.attrs["model_config"] = json.dumps(config)
    return target


def test_legacy_tf_op_layer_keras3_cannot_rebuild(saved: dict[str, Path], tmp_path: Path) -> None:
    legacy = {
        "class_name": "Functional",
        "config": {
            "name": "model",
            "layers": [
                {
                    "class_name": "InputLayer",
                    "name": "x",
                    "config": {"name": "x", "batch_input_shape": [None, 4]},
                    "inbound_nodes": [],
                },
                {
                    "class_name": "TFOpLambda",
                    "name": "tf.math.add",
                    "config": {"name": "tf.math.add", "function": "math.add"},
                    "inbound_nodes": [["x", 0, 0, {"y": 1.0}]],
                },
            ],
            "input_layers": [["x", 0, 0]],
            "output_layers": [["tf.math.add", 0, 0]],
        },
    }
    path = rewrite_h5_config(saved["plain.h5"], tmp_path / "legacy.h5", legacy)
    assert_one_line_error(path, "'tf.math.add' \\(TFOpLambda\\) is not a Keras")


def test_legacy_config_that_does_not_rebuild(saved: dict[str, Path], tmp_path: Path) -> None:
    broken = {
        "class_name": "Sequential",
        "config": {"name": "s", "layers": [{"class_name": "Dense", "config": {"name": "d"}}]},
    }
    path = rewrite_h5_config(saved["plain.h5"], tmp_path / "broken.h5", broken)
    assert_one_line_error(path, "cannot rebuild this legacy HDF5 model")


def test_missing_keras_extra_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, saved: dict[str, Path]
) -> None:
    monkeypatch.setitem(sys.modules, "keras", None)
    assert_one_line_error(saved["plain.keras"], "pip install 'bnfold\\[keras\\]'")


def test_import_is_lazy_and_tensorflow_noise_is_silenced() -> None:
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import bnfold.frontends.keras as k\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
        "model = k.load_keras_model(Path('models/iris_mlp.h5'))\n"
        "folded, _ = k.fold_keras_model(model)\n"
        "k.keras_to_onnx(folded)\n"
    )
    done = run_python_quietly(script, REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ""
    assert done.stderr == ""
