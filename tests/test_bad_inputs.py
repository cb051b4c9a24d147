"""Bad input through the command line: one clear line, the documented exit code, the input
untouched and no partial output (no OUT, no OUT.data, no ``.bnfold-*`` temporary folder).

| case                               | exit | what the user sees                                     |
|------------------------------------|------|--------------------------------------------------------|
| empty file                         | 3    | not an ONNX model (empty file)                         |
| random bytes                       | 3    | not an ONNX model                                      |
| truncated ONNX                     | 3    | not an ONNX model                                      |
| dangling input (nothing writes it) | 3    | invalid ONNX model: ... not output of any previous ... |
| cycle                              | 3    | invalid ONNX model: ... topologically sorted ...       |
| ``model.txt``                      | 3    | not a model file name (expected .onnx, .keras, .h5)    |
| a zip archive named ``.onnx``      | 3    | a zip archive, not an ONNX model (a Keras .keras ...)  |
| an HDF5 file named ``.onnx``       | 3    | an HDF5 file, not an ONNX model (a Keras .h5 ...)      |
| input is a folder                  | 2    | click: Invalid value for 'MODEL': ... is a directory   |
| ``.h5`` holding weights only       | 3    | holds weights only / no Keras model                    |
| corrupt ``.keras`` zip             | 3    | not a valid .keras file (not a zip archive, or damaged)|
| Keras Lambda layer (safe mode)     | 3    | names the layer, suggests --allow-unsafe               |
| Conv/ConvTranspose group=0         | 3    | group 0 must be at least 1 (onnxruntime: SIGFPE)       |
| strides 0 / negative pads          | 3    | must be at least 1 / must not be negative              |
| initializer dims vs its data       | 3    | N bytes of data for dims [...]                         |
| initializer of undefined data type | 3    | has no known data type                                 |
| string initializer with raw data   | 3    | a string tensor with raw or external data              |
| external data shorter than dims    | 3    | its external data is shorter than its dims need        |
| a name or string attribute not UTF-8 | 3  | is not valid UTF-8 text                                |
| Gemm/Conv weight of the wrong rank | 0/3  | left: unsupported_layer (--no-check), else onnxruntime |
| BN with training_mode=1            | 0    | BN left: training_mode; OUT is a byte copy             |
| zero variance                      | 0    | folded (epsilon keeps it finite)                       |
| negative / NaN variance            | 0    | BN left: invalid_params                                |
| an input too large for random data | 3    | too large for random check inputs; --dim or --inputs   |
| BN parameters of the wrong length  | 3    | onnxruntime cannot run the model; suggests --no-check  |
| ... with --no-check                | 0    | BN left: invalid_params                                |
| unknown custom-domain op           | 3    | onnxruntime cannot run the model; suggests --no-check  |
| ... with --no-check                | 0    | BN folded, the custom node kept                        |
| BN inside an If branch / Loop body | 0    | folded there                                           |
| OUT is the input                   | 2    | is the input file; pass --overwrite-input              |
| OUT's folder is missing            | 4    | output folder does not exist                           |
| OUT's "folder" is a regular file   | 4    | is not a folder                                        |
| OUT is an existing folder          | 2    | click: Invalid value for '-o': ... is a directory      |
| read-only OUT folder (not as root) | 4    | cannot write                                           |
| write fails midway (os.replace)    | 4    | cannot write; no OUT, no OUT.data, no temp folder      |
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from bnfold.cli import cli
from bnfold.testing import TEST_IR_VERSION, batchnorm_node, batchnorm_params, make_model

MODELS = Path(__file__).resolve().parent.parent / "models"
DEMO = MODELS / "pytorch_style.onnx"
FLOAT = TensorProto.FLOAT
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_error_line(stderr: str, message: str) -> None:
    """bnfold's errors are one line; click's usage errors end with their ``Error:`` line."""
    lines = stderr.strip().splitlines()
    if lines and lines[-1].startswith("Error: "):
        assert message in lines[-1], stderr  # click's usage error (exit 2)
        return
    assert len(lines) == 1 and lines[0].startswith("bnfold: error: "), stderr
    assert message in lines[0], stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# --------------------------------------------------------------------------- model builders


def conv_bn_model(rng: np.random.Generator, **bn: Any) -> onnx.ModelProto:
    params = {**batchnorm_params(rng, 4), **bn}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), batchnorm_node("c", "y")]
    inits = {"w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32), **params}
    return make_model(
        nodes, [("x", FLOAT, [2, 3, 4, 4])], [("y", FLOAT, [2, 4, 4, 4])], inits, infer_shapes=False
    )


def raw_model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A model that is NOT checked: for graphs the checker must refuse."""
    graph = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("x", FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("y", FLOAT, [2, 4, 4, 4])],
        [numpy_helper.from_array(array, name) for name, array in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = TEST_IR_VERSION
    return model


def dangling_model(rng: np.random.Generator) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "ghost"], ["y"], name="add"),
    ]
    return raw_model(nodes, {"w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32)})


def cyclic_model(rng: np.random.Generator) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "d"], ["e"], name="add"),
        helper.make_node("Relu", ["e"], ["d"], name="relu"),
        helper.make_node("Identity", ["e"], ["y"], name="out"),
    ]
    return raw_model(nodes, {"w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32)})


def training_mode_model(rng: np.random.Generator) -> onnx.ModelProto:
    params = batchnorm_params(rng, 4)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node(
            "BatchNormalization",
            ["c", *params],
            ["y", "running_mean", "running_var"],
            name="bn",
            training_mode=1,
        ),
    ]
    inits = {"w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32), **params}
    return make_model(
        nodes,
        [("x", FLOAT, [2, 3, 4, 4])],
        [("y", FLOAT, [2, 4, 4, 4])],
        inits,
        opset=15,
        infer_shapes=False,
    )


def custom_op_model(rng: np.random.Generator) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        batchnorm_node("c", "b"),
        helper.make_node("Swizzle", ["b"], ["y"], name="swizzle", domain="com.example"),
    ]
    inits = {"w": rng.normal(size=(4, 3, 1, 1)).astype(np.float32), **batchnorm_params(rng, 4)}
    graph = helper.make_graph(
        nodes,
        "custom",
        [helper.make_tensor_value_info("x", FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("y", FLOAT, [2, 4, 4, 4])],
        [numpy_helper.from_array(array, name) for name, array in inits.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)],
    )
    model.ir_version = TEST_IR_VERSION
    return model


def _conv_bn_body(rng: np.random.Generator, name: str, data: str, out: str) -> onnx.GraphProto:
    """A subgraph ``out = BN(Conv(data))`` with its weights as subgraph initializers; ``data``
    comes from the outer scope (an If branch) or is a body input (a Loop)."""
    params = batchnorm_params(rng, 3, f"{name}_bn")
    inits = {f"{name}_w": rng.normal(size=(3, 3, 1, 1)).astype(np.float32), **params}
    return helper.make_graph(
        [
            helper.make_node("Conv", [data, f"{name}_w"], [f"{name}_c"], name=f"{name}_conv"),
            batchnorm_node(f"{name}_c", out, f"{name}_bn"),
        ],
        name,
        [],
        [helper.make_tensor_value_info(out, FLOAT, [2, 3, 4, 4])],
        [numpy_helper.from_array(array, key) for key, array in inits.items()],
    )


def if_model(rng: np.random.Generator) -> onnx.ModelProto:
    then_branch = _conv_bn_body(rng, "then", "x", "then_y")
    else_branch = _conv_bn_body(rng, "else", "x", "else_y")
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node(
            "If", ["positive"], ["y"], then_branch=then_branch, else_branch=else_branch
        ),
    ]
    return make_model(
        nodes,
        [("x", FLOAT, [2, 3, 4, 4])],
        [("y", FLOAT, [2, 3, 4, 4])],
        {"zero": np.zeros((), np.float32)},
        infer_shapes=False,
    )


def loop_model(rng: np.random.Generator) -> onnx.ModelProto:
    body = _conv_bn_body(rng, "body", "v_in", "v_out")
    body.input.extend(
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", FLOAT, [2, 3, 4, 4]),
        ]
    )
    body.node.insert(0, helper.make_node("Identity", ["cond_in"], ["cond_out"]))
    body.output.insert(0, helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []))
    nodes = [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)]
    return make_model(
        nodes,
        [("x", FLOAT, [2, 3, 4, 4])],
        [("y", FLOAT, [2, 3, 4, 4])],
        {"trips": np.array(2, np.int64)},
        infer_shapes=False,
    )


# --------------------------------------------------------------------------- Keras builders


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    layers = keras.layers
    folder = tmp_path_factory.mktemp("keras_bad")
    inputs = keras.Input((4,), name="x")
    hidden = layers.BatchNormalization(name="bn")(layers.Dense(3, name="dense")(inputs))
    plain = keras.Model(inputs, hidden)
    doubled = layers.Lambda(lambda t: t * 2.0, name="double_it")(hidden)
    with_lambda = keras.Model(inputs, doubled)
    files = {
        "plain.keras": folder / "plain.keras",
        "plain.h5": folder / "plain.h5",
        "lambda.keras": folder / "lambda.keras",
        "weights.h5": folder / "only.weights.h5",
    }
    plain.save(files["plain.keras"])
    plain.save(files["plain.h5"])
    with_lambda.save(files["lambda.keras"])
    plain.save_weights(files["weights.h5"])
    return files


# --------------------------------------------------------------------------- the table


@dataclass
class Case:
    """``make`` writes the input into ``folder`` and returns its path; ``args`` go after
    ``MODEL -o OUT``. ``written`` says whether OUT must exist afterwards."""

    make: Callable[[Path, np.random.Generator, dict[str, Path]], Path]
    code: int
    message: str
    args: tuple[str, ...] = ()
    written: bool = False
    keras: bool = False
    log: tuple[str, ...] = field(default_factory=tuple)


def _bytes(name: str, data: bytes) -> Callable[..., Path]:
    def make(folder: Path, rng: np.random.Generator, keras: dict[str, Path]) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return make


def _onnx(build: Callable[[np.random.Generator], onnx.ModelProto], name: str = "m.onnx") -> Any:
    def make(folder: Path, rng: np.random.Generator, keras: dict[str, Path]) -> Path:
        path = folder / name
        path.write_bytes(build(rng).SerializeToString())
        return path

    return make


def _zip_named_onnx(folder: Path, rng: np.random.Generator, keras: dict[str, Path]) -> Path:
    path = folder / "model.onnx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    return path


def _h5_named_onnx(folder: Path, rng: np.random.Generator, keras: dict[str, Path]) -> Path:
    path = folder / "model.onnx"
    path.write_bytes(HDF5_SIGNATURE + bytes(rng.integers(0, 256, 4000, dtype=np.uint8)))
    return path


def _folder_as_input(folder: Path, rng: np.random.Generator, keras: dict[str, Path]) -> Path:
    path = folder / "dir.onnx"
    path.mkdir()
    return path


def _copy_of(key: str, name: str) -> Any:
    def make(folder: Path, rng: np.random.Generator, keras: dict[str, Path]) -> Path:
        path = folder / name
        path.write_bytes(keras[key].read_bytes())
        return path

    return make


def _corrupt_keras(folder: Path, rng: np.random.Generator, keras: dict[str, Path]) -> Path:
    path = folder / "corrupt.keras"
    data = keras["plain.keras"].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _variance(values: list[float]) -> Any:
    return _onnx(lambda rng: conv_bn_model(rng, bn_var=np.array(values, np.float32)))


def _demo_edit(edit: Callable[[onnx.ModelProto], None], name: str = "m.onnx") -> Any:
    """The demo model with one field changed, as the fuzzer found them."""

    def make(folder: Path, rng: np.random.Generator, keras: dict[str, Path]) -> Path:
        model = onnx.load(DEMO)
        edit(model)
        path = folder / name
        path.write_bytes(model.SerializeToString())
        return path

    return make


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(node for node in model.graph.node if node.name == name)


def _tensor(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(tensor for tensor in model.graph.initializer if tensor.name == name)


def _set_attribute(node: str, attribute: str, value: Any) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        target = next(a for a in _node(model, node).attribute if a.name == attribute)
        if isinstance(value, list):
            del target.ints[:]
            target.ints.extend(value)
        else:
            target.i = value

    return edit


def _fc_dims(model: onnx.ModelProto) -> None:
    _tensor(model, "fc_w").dims[1] = 500


def _undefined_type(model: onnx.ModelProto) -> None:
    _tensor(model, "fc_w").data_type = onnx.TensorProto.UNDEFINED


def _string_type(model: onnx.ModelProto) -> None:
    _tensor(model, "fc_w").data_type = onnx.TensorProto.STRING


def _bad_utf8(model: onnx.ModelProto) -> None:
    # protobuf's Python API refuses such a string, so the bytes are edited in place.
    _node(model, "conv").name = "conv\u00e9"


def _bad_utf8_bytes(folder: Path, rng: np.random.Generator, keras: dict[str, Path]) -> Path:
    path = _demo_edit(_bad_utf8)(folder, rng, keras)
    path.write_bytes(path.read_bytes().replace("conv\u00e9".encode(), b"conv\xe9\xff"))
    return path


def _bad_auto_pad(folder: Path, rng: np.random.Generator, keras: dict[str, Path]) -> Path:
    model = onnx.load(DEMO)
    _node(model, "conv").attribute.append(helper.make_attribute("auto_pad", "NOTSET"))
    path = folder / "pad.onnx"
    path.write_bytes(model.SerializeToString().replace(b"NOTSET", b"NOTS\xe9T"))
    return path


def _huge_input(model: onnx.ModelProto) -> None:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 2**20


def _gemm_weight_rank(model: onnx.ModelProto) -> None:
    weight = _tensor(model, "fc_w")
    weight.dims[:] = [5, 8, 64]


def _short_external_data(folder: Path, rng: np.random.Generator, keras: dict[str, Path]) -> Path:
    path = folder / "ext.onnx"
    onnx.save(
        onnx.load(DEMO),
        path,
        save_as_external_data=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    data = folder / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:-100])
    return path


DEMO_BYTES = DEMO.read_bytes()
ASK_NO_CHECK = "--no-check"
CASES: dict[str, Case] = {
    "empty-file": Case(_bytes("empty.onnx", b""), 3, "not an ONNX model"),
    "random-bytes": Case(
        _bytes("noise.onnx", bytes(np.random.default_rng(7).integers(0, 256, 5000, np.uint8))),
        3,
        "not an ONNX model",
    ),
    "truncated-onnx": Case(
        _bytes("cut.onnx", DEMO_BYTES[: len(DEMO_BYTES) // 2]), 3, "not an ONNX"
    ),
    "dangling-input": Case(_onnx(dangling_model), 3, "invalid ONNX model"),
    "cycle": Case(_onnx(cyclic_model), 3, "invalid ONNX model"),
    "suffix-txt": Case(_bytes("model.txt", DEMO_BYTES), 3, "not a model file name"),
    "zip-named-onnx": Case(_zip_named_onnx, 3, "zip archive"),
    "h5-named-onnx": Case(_h5_named_onnx, 3, "HDF5 file"),
    "folder-as-input": Case(_folder_as_input, 3, "not a TensorFlow SavedModel"),
    "h5-weights-only": Case(_copy_of("weights.h5", "weights.h5"), 3, "weights", keras=True),
    "corrupt-keras-zip": Case(_corrupt_keras, 3, "not a valid .keras file", keras=True),
    "keras-lambda-safe-mode": Case(
        _copy_of("lambda.keras", "lambda.keras"), 3, "double_it", keras=True
    ),
    "group-zero": Case(_demo_edit(_set_attribute("deconv", "group", 0)), 3, "group 0"),
    "stride-zero": Case(_demo_edit(_set_attribute("deconv", "strides", [0, 2])), 3, "at least 1"),
    "negative-pads": Case(
        _demo_edit(_set_attribute("conv", "pads", [1, -1, 1, 1])), 3, "must not be negative"
    ),
    "tensor-size-vs-dims": Case(_demo_edit(_fc_dims), 3, "bytes of data for dims [5, 500]"),
    "tensor-undefined-type": Case(_demo_edit(_undefined_type), 3, "no known data type"),
    "tensor-string-with-raw-data": Case(_demo_edit(_string_type), 3, "a string tensor"),
    "external-data-too-short": Case(_short_external_data, 3, "external data is shorter"),
    "name-not-utf8": Case(_bad_utf8_bytes, 3, "not valid UTF-8"),
    "attribute-not-utf8": Case(_bad_auto_pad, 3, "attribute auto_pad"),
    "huge-input-shape": Case(_demo_edit(_huge_input), 3, "too large for random check inputs"),
    "huge-dim-option": Case(
        _bytes("demo.onnx", DEMO.read_bytes()),
        3,
        "--dim NAME=SIZE",
        args=("--dim", "batch=10000000000"),
    ),
    "gemm-weight-rank": Case(_demo_edit(_gemm_weight_rank), 3, ASK_NO_CHECK),
    "gemm-weight-rank-no-check": Case(
        _demo_edit(_gemm_weight_rank),
        0,
        "",
        args=("--no-check",),
        written=True,
        log=("unsupported_layer",),
    ),
    "training-mode": Case(
        _onnx(training_mode_model, "train.onnx"), 0, "", written=True, log=("training_mode",)
    ),
    "zero-variance": Case(_variance([0.0] * 4), 0, "", written=True, log=("folded into previous",)),
    "negative-variance": Case(
        _variance([1.0, -5.0, 1.0, 1.0]), 0, "", written=True, log=("invalid_params",)
    ),
    "nan-variance": Case(
        _variance([1.0, float("nan"), 1.0, 1.0]), 0, "", written=True, log=("invalid_params",)
    ),
    "wrong-length-params": Case(_variance([1.0, 1.0, 1.0]), 3, ASK_NO_CHECK),
    "wrong-length-params-no-check": Case(
        _variance([1.0, 1.0, 1.0]),
        0,
        "",
        args=("--no-check",),
        written=True,
        log=("invalid_params",),
    ),
    "custom-op": Case(_onnx(custom_op_model), 3, ASK_NO_CHECK),
    "custom-op-no-check": Case(
        _onnx(custom_op_model),
        0,
        "",
        args=("--no-check",),
        written=True,
        log=("folded into previous conv",),
    ),
    "bn-in-if": Case(_onnx(if_model), 0, "", written=True, log=("then_bn", "else_bn")),
    "bn-in-loop": Case(_onnx(loop_model), 0, "", written=True, log=("folded into previous",)),
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, marks=[pytest.mark.keras] if CASES[name].keras else []) for name in CASES],
)
def test_bad_input(name: str, tmp_path: Path, keras_files_lazy: Callable[[], dict[str, Path]]):
    case = CASES[name]
    rng = np.random.default_rng(0)
    source_dir, out_dir = tmp_path / "in", tmp_path / "out"
    source_dir.mkdir()
    out_dir.mkdir()
    source = case.make(source_dir, rng, keras_files_lazy() if case.keras else {})
    before = snapshot(source_dir)
    out = out_dir / "folded.onnx"

    code, stdout, stderr = run(str(source), "-o", str(out), *case.args)

    assert code == case.code, stderr
    assert "Traceback" not in stderr
    assert snapshot(source_dir) == before
    if case.code == 0:
        assert stderr == ""
        for text in case.log:
            assert text in stdout
    else:
        assert_error_line(stderr, case.message)
    if case.written:
        assert sorted(p.name for p in out_dir.iterdir()) == ["folded.onnx"]
        onnx.checker.check_model(onnx.load(out))
    else:
        assert list(out_dir.iterdir()) == []


@pytest.fixture
def keras_files_lazy(request: pytest.FixtureRequest) -> Callable[[], dict[str, Path]]:
    """The Keras files only for the cases that need them (TensorFlow is slow to import)."""
    return lambda: request.getfixturevalue("keras_files")


def test_training_mode_output_is_a_byte_copy(tmp_path: Path):
    source = tmp_path / "train.onnx"
    source.write_bytes(training_mode_model(np.random.default_rng(0)).SerializeToString())
    out = tmp_path / "out.onnx"
    assert run(str(source), "-o", str(out))[0] == 0
    assert out.read_bytes() == source.read_bytes()


@pytest.mark.keras
def test_keras_lambda_names_the_layer_and_the_flag(tmp_path: Path, keras_files: dict[str, Path]):
    code, _, stderr = run(str(keras_files["lambda.keras"]), "-o", str(tmp_path / "f.onnx"))
    assert code == 3
    assert "double_it" in stderr and "--allow-unsafe" in stderr


def test_custom_op_no_check_keeps_the_custom_node(tmp_path: Path):
    source = tmp_path / "custom.onnx"
    source.write_bytes(custom_op_model(np.random.default_rng(0)).SerializeToString())
    out = tmp_path / "out.onnx"
    code, _, stderr = run(str(source), "-o", str(out))
    assert code == 3 and "com.example" in stderr and "Swizzle" in stderr
    assert run(str(source), "-o", str(out), "--no-check")[0] == 0
    folded = onnx.load(out)
    assert [(n.domain, n.op_type) for n in folded.graph.node] == [
        ("", "Conv"),
        ("com.example", "Swizzle"),
    ]


@pytest.mark.parametrize("build", [if_model, loop_model], ids=["if", "loop"])
def test_batchnorm_in_subgraphs_is_folded_there(tmp_path: Path, build: Any):
    source = tmp_path / "sub.onnx"
    source.write_bytes(build(np.random.default_rng(0)).SerializeToString())
    out = tmp_path / "out.onnx"
    code, _, stderr = run(str(source), "-o", str(out))
    assert code == 0, stderr
    kinds = [
        node.op_type
        for top in onnx.load(out).graph.node
        for attribute in top.attribute
        if attribute.HasField("g")
        for node in attribute.g.node
    ]
    assert "BatchNormalization" not in kinds and "Conv" in kinds


# --------------------------------------------------------------------------- the output side


def _demo_copy(tmp_path: Path) -> Path:
    source = tmp_path / "in" / "model.onnx"
    source.parent.mkdir()
    source.write_bytes(DEMO_BYTES)
    return source


def _no_temp_folders(folder: Path) -> bool:
    return not any(path.name.startswith(".bnfold-") for path in folder.rglob("*"))


def test_output_equal_to_input_exits_2_and_keeps_the_input(tmp_path: Path):
    source = _demo_copy(tmp_path)
    code, _, stderr = run(str(source), "-o", str(source))
    assert code == 2 and "--overwrite-input" in stderr and "Traceback" not in stderr
    assert source.read_bytes() == DEMO_BYTES
    assert sorted(p.name for p in source.parent.iterdir()) == ["model.onnx"]


def test_output_equal_to_input_through_another_spelling(tmp_path: Path):
    source = _demo_copy(tmp_path)
    other = source.parent / ".." / "in" / "model.onnx"
    code, _, _ = run(str(source), "-o", str(other))
    assert code == 2 and source.read_bytes() == DEMO_BYTES


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        (lambda d: d / "missing" / "f.onnx", "does not exist"),
        (lambda d: _file(d / "some_file") / "f.onnx", "is not a folder"),
    ],
    ids=["missing-folder", "folder-is-a-file"],
)
def test_unwritable_output_exits_4(tmp_path: Path, make_out: Any, message: str):
    source = _demo_copy(tmp_path)
    workspace = tmp_path / "work"
    workspace.mkdir()
    out = make_out(workspace)
    before = snapshot(workspace)
    code, _, stderr = run(str(source), "-o", str(out))
    assert code == 4, stderr
    assert_error_line(stderr, message)
    assert "Traceback" not in stderr
    assert snapshot(workspace) == before and _no_temp_folders(workspace)
    assert source.read_bytes() == DEMO_BYTES


def test_output_that_is_a_folder_is_a_usage_error(tmp_path: Path):
    source = _demo_copy(tmp_path)
    taken = tmp_path / "taken.onnx"
    taken.mkdir()
    code, _, stderr = run(str(source), "-o", str(taken))
    assert code == 2 and "is a directory" in stderr and "Traceback" not in stderr
    assert list(taken.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_output_folder_exits_4(tmp_path: Path):
    source = _demo_copy(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, stderr = run(str(source), "-o", str(locked / "f.onnx"))
        assert code == 4 and "cannot write" in stderr
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def _file(path: Path) -> Path:
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_failure_in_the_middle_of_the_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, external: bool
):
    """The weights file is moved into place first; a failure on the model file after it must
    take the weights file back out."""
    import bnfold.frontends.onnx as frontend

    source = _demo_copy(tmp_path)
    if external:
        onnx.save(
            onnx.load(source),
            source,
            save_as_external_data=True,
            location="model.onnx.data",
            size_threshold=0,
        )
    before = snapshot(source.parent)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    calls: list[str] = []
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        calls.append(Path(dst).name)
        if Path(dst).name == "folded.onnx":
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(frontend.os, "replace", failing_replace)
    code, _, stderr = run(str(source), "-o", str(out_dir / "folded.onnx"))
    assert code == 4 and "No space left on device" in stderr, stderr
    assert calls[-1] == "folded.onnx"
    assert ("folded.onnx.data" in calls) is external
    assert list(out_dir.iterdir()) == []
    assert snapshot(source.parent) == before


def test_failure_inside_the_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import bnfold.frontends.onnx as frontend

    source = _demo_copy(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def failing_write(model: Any, file: Any) -> None:
        file.write(b"half a model")
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(frontend, "write_model", failing_write)
    code, _, stderr = run(str(source), "-o", str(out_dir / "folded.onnx"))
    assert code == 4 and "Input/output error" in stderr
    assert list(out_dir.iterdir()) == []


def test_existing_output_survives_a_failed_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A failed write never leaves OUT half-replaced: the previous file stays as it was."""
    import bnfold.frontends.onnx as frontend

    source = _demo_copy(tmp_path)
    out = tmp_path / "folded.onnx"
    out.write_bytes(b"previous output")

    def failing_write(model: Any, file: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(frontend, "write_model", failing_write)
    assert run(str(source), "-o", str(out))[0] == 4
    assert out.read_bytes() == b"previous output"
    assert _no_temp_folders(tmp_path)


# --------------------------------------------------------------------------- large models


def test_model_over_the_inline_limit_is_checked_and_written_with_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """An in-memory model whose weights exceed what one protobuf holds: the original runs
    before the fold changes it (onnxruntime gets it through a temporary folder, not bytes),
    OUT gets OUT.data. The limit is lowered so the test needs kilobytes, not gigabytes
    (benchmarks/large_model.py: 2.6 GiB)."""
    import onnx_ir as ir

    import bnfold
    import bnfold.frontends.onnx as frontend
    import bnfold.frontends.onnx_frontend as api
    from bnfold.testing import pytorch_style_model

    monkeypatch.setattr(frontend, "INLINE_LIMIT_BYTES", 1000)
    sources: list[Any] = []
    real_run_model = api.run_model

    def spy(source: Any, *args: Any, **kwargs: Any) -> Any:
        sources.append(source)
        return real_run_model(source, *args, **kwargs)

    monkeypatch.setattr(api, "run_model", spy)
    model = ir.serde.deserialize_model(pytorch_style_model(np.random.default_rng(0)))
    result = bnfold.fold(model, output=tmp_path / "out.onnx")

    assert result.check is not None and result.check.passed and len(result.folded) == 3
    assert sources[0] is model  # the original, run before the fold and never copied
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "out.onnx.data"]
    written = onnx.load(tmp_path / "out.onnx", load_external_data=False)
    external = {
        t.name for t in written.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    }
    assert "fc_w" in external  # tensors over 256 bytes; the small ones stay inline
    assert bnfold.check(pytorch_style_model(np.random.default_rng(0)), tmp_path / "out.onnx").passed


@pytest.mark.keras
@pytest.mark.parametrize("suffix", [".keras", ".onnx"])
def test_keras_input_write_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keras_files: dict[str, Path], suffix: str
):
    out = tmp_path / "out" / f"folded{suffix}"
    out.parent.mkdir()
    real_replace = os.replace

    def failing_replace(src: Any, dst: Any) -> None:
        if Path(dst) == out:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    before = keras_files["plain.keras"].read_bytes()
    code, _, stderr = run(str(keras_files["plain.keras"]), "-o", str(out))
    assert code == 4, stderr
    assert_error_line(stderr, "No space left on device")
    assert list(out.parent.iterdir()) == []
    assert keras_files["plain.keras"].read_bytes() == before


def test_overwriting_an_external_data_input_keeps_the_result_model_valid(tmp_path: Path):
    """OUT is MODEL, weights in MODEL.data: the new data file replaces the one the model's
    lazy tensors read, so they are pointed at the new file; without that, ``result.model``
    (what --report and --bench measure) would read the new bytes at the old offsets."""
    import bnfold
    from bnfold.check.equivalence import random_inputs
    from bnfold.frontends.onnx import input_specs
    from bnfold.frontends.onnx_run import run_model

    original, folder = tmp_path / "original", tmp_path / "work"
    for where in (original, folder):
        where.mkdir()
        onnx.save(
            onnx.load(MODELS / "tf2onnx_cnn.onnx"),
            where / "model.onnx",
            save_as_external_data=True,
            location="model.onnx.data",
            size_threshold=100,
        )
    result = bnfold.fold(folder / "model.onnx", output=folder / "model.onnx", overwrite_input=True)
    assert result.model is not None and len(result.folded) == 3
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert bnfold.check(original / "model.onnx", folder / "model.onnx").passed
    feeds = random_inputs(input_specs(result.model), dims={"unk__0": 2})
    in_memory = run_model(result.model, feeds)
    reference = run_model(str(original / "model.onnx"), feeds)
    for name, values in reference.items():
        np.testing.assert_allclose(in_memory[name], values, rtol=1e-4, atol=1e-5)
