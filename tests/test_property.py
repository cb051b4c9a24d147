"""Property: on random graphs the fold either matches the original or leaves a BN with a reason.

Each graph is 1-2 blocks. A block is an optional run of affines (so forward folds are tried),
a linear layer (Conv 1-D/2-D with random groups, kernel, stride, pads and dilations;
ConvTranspose with groups; Gemm with transA/transB/alpha/beta and every shape of C; MatMul
with or without a bias Add), optional layout ops (Identity, Transpose, Reshape, Flatten) and
a run of affines (BatchNormalization; Mul/Add/Sub/Div by a per-axis or scalar constant on
either side), with an optional Relu between blocks. Dtypes are float32 and float16 (every op
used has a float16 CPU kernel in onnxruntime 1.31).

For every graph: the fold raises nothing but bnfold's own errors, the folded model passes
the full ONNX checker, every entry is folded or carries a reason, and the outputs of both
models in onnxruntime (optimisations disabled) agree within the dtype's default tolerance.

``max_examples`` is kept small and the run derandomized so CI is quick and reproducible;
``python benchmarks/property_run.py --examples 1000`` (or ``BNFOLD_PROPERTY_EXAMPLES``)
runs many more.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from bnfold.check.equivalence import random_inputs
from bnfold.comparison import compare_outputs
from bnfold.errors import BnfoldError
from bnfold.fold import FoldPass, fold_model
from bnfold.frontends.onnx import add_inferred_shapes, input_specs
from bnfold.frontends.onnx_run import run_model
from bnfold.testing import TEST_IR_VERSION

EXAMPLES = int(os.environ.get("BNFOLD_PROPERTY_EXAMPLES", "60"))
DTYPES = (np.float32, np.float16)


@dataclass
class GraphBuilder:
    """Builds a graph one node at a time, tracking the current value and its static shape."""

    dtype: Any
    shape: list[int]
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: dict[str, np.ndarray] = field(default_factory=dict)
    current: str = "x"
    counter: int = 0
    description: list[str] = field(default_factory=list)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    extra_outputs: list[str] = field(default_factory=list)
    overridable: list[str] = field(default_factory=list)  # initializers also graph inputs

    @property
    def elem(self) -> int:
        return helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def const(self, prefix: str, array: np.ndarray, dtype: Any = None) -> str:
        name = self.fresh(prefix)
        self.inits[name] = np.asarray(array).astype(dtype or self.dtype)
        return name

    def add(self, op: str, inputs: list[str], **attributes: Any) -> None:
        output = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        self.current = output
        self.shape = self._infer_shape()
        self.shapes[output] = self.shape
        shown = {k: v for k, v in attributes.items() if k != "to"}
        self.description.append(f"{op}{shown or ''}->{self.shape}")

    def model(self, *, final: bool = True) -> onnx.ModelProto:
        """The graph so far, with the current value as its output (shaped when ``final``)."""
        graph = helper.make_graph(
            self.nodes,
            "random",
            [helper.make_tensor_value_info("x", self.elem, self.input_shape)]
            + [
                helper.make_tensor_value_info(
                    name,
                    helper.np_dtype_to_tensor_dtype(self.inits[name].dtype),
                    self.inits[name].shape,
                )
                for name in self.overridable
                if final
            ],
            [helper.make_tensor_value_info(self.current, self.elem, self.shape if final else None)]
            + [
                helper.make_tensor_value_info(name, self.elem, self.shapes[name])
                for name in self.extra_outputs
                if final and name != self.current
            ],
            [numpy_helper.from_array(array, name) for name, array in self.inits.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = TEST_IR_VERSION
        return model

    def _infer_shape(self) -> list[int]:
        inferred = onnx.shape_inference.infer_shapes(self.model(final=False), strict_mode=True)
        output = inferred.graph.output[0].type.tensor_type
        dims = [dim.dim_value for dim in output.shape.dim]
        if not dims and output.shape.dim:
            raise AssertionError("unknown dims")
        return dims

    input_shape: list[int] = field(default_factory=list)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _weights(draw: Any, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape) / np.sqrt(max(fan_in, 1))


def draw_conv(draw: Any, g: GraphBuilder) -> None:
    channels, spatial = g.shape[1], g.shape[2:]
    groups = draw(st.sampled_from(_divisors(channels)))
    out = groups * draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in spatial]
    dilations = [draw(st.integers(1, 2)) for _ in spatial]
    strides = [draw(st.integers(1, 2)) for _ in spatial]
    pads = [draw(st.integers(0, 1)) for _ in range(2 * len(spatial))]
    for axis, size in enumerate(spatial):
        reach = (kernel[axis] - 1) * dilations[axis] + 1
        if reach > size + pads[axis] + pads[axis + len(spatial)]:
            kernel[axis], dilations[axis] = 1, 1
    fan_in = channels // groups * int(np.prod(kernel))
    weight = g.const("w", _weights(draw, (out, channels // groups, *kernel), fan_in))
    inputs = [g.current, weight]
    if draw(st.booleans()):
        inputs.append(g.const("b", _weights(draw, (out,), 1)))
    g.add(
        "Conv",
        inputs,
        group=groups,
        kernel_shape=kernel,
        dilations=dilations,
        strides=strides,
        pads=pads,
    )


def draw_conv_transpose(draw: Any, g: GraphBuilder) -> None:
    channels, spatial = g.shape[1], g.shape[2:]
    groups = draw(st.sampled_from(_divisors(channels)))
    per_group = draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in spatial]
    strides = [draw(st.integers(1, 2)) for _ in spatial]
    dilations = [draw(st.integers(1, 2)) for _ in spatial]
    pads = [draw(st.integers(0, k - 1)) for k in kernel] * 2
    for axis, size in enumerate(spatial):
        reach = (size - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1
        if reach - 2 * pads[axis] < 1:
            pads[axis] = pads[axis + len(spatial)] = 0
    fan_in = channels // groups * int(np.prod(kernel))
    weight = g.const("w", _weights(draw, (channels, per_group, *kernel), fan_in))
    inputs = [g.current, weight]
    if draw(st.booleans()):
        inputs.append(g.const("b", _weights(draw, (groups * per_group,), 1)))
    g.add(
        "ConvTranspose",
        inputs,
        group=groups,
        kernel_shape=kernel,
        strides=strides,
        dilations=dilations,
        pads=pads,
    )


def draw_gemm(draw: Any, g: GraphBuilder) -> None:
    rows, cols = g.shape
    trans_a = draw(st.integers(0, 1))
    trans_b = draw(st.integers(0, 1))
    m, k = (cols, rows) if trans_a else (rows, cols)
    n = draw(st.integers(1, 6))
    weight = _weights(draw, (k, n), k)
    inputs = [g.current, g.const("w", weight.T if trans_b else weight)]
    c_shape = draw(st.sampled_from([None, (n,), (1, n), (m, n), (1,), (m, 1), ()]))
    if c_shape is not None:
        inputs.append(g.const("c", _weights(draw, c_shape, 1)))
    g.add(
        "Gemm",
        inputs,
        transA=trans_a,
        transB=trans_b,
        alpha=draw(st.sampled_from([1.0, 0.5, -1.5])),
        beta=draw(st.sampled_from([1.0, 0.5, 2.0])),
    )


def draw_matmul(draw: Any, g: GraphBuilder) -> None:
    k = g.shape[-1]
    n = draw(st.integers(1, 6))
    g.add("MatMul", [g.current, g.const("w", _weights(draw, (k, n), k))])
    if draw(st.booleans()):
        g.add("Add", [g.current, g.const("bias", _weights(draw, (n,), 1))])


def draw_layout(draw: Any, g: GraphBuilder) -> None:
    rank = len(g.shape)
    kind = draw(st.sampled_from(["Identity", "Transpose", "Reshape", "Flatten"]))
    if kind == "Identity":
        g.add("Identity", [g.current])
    elif kind == "Transpose":
        perm = draw(st.permutations(range(rank)))
        g.add("Transpose", [g.current], perm=list(perm))
    elif kind == "Flatten":
        g.add("Flatten", [g.current], axis=draw(st.integers(1, rank - 1)))
    else:
        options = [[g.shape[0], -1], [*g.shape, 1]]
        if rank >= 3:
            options.append([*g.shape[:-2], g.shape[-2] * g.shape[-1]])
        target = draw(st.sampled_from(options))
        g.add("Reshape", [g.current, g.const("shape", np.array(target), np.int64)])


def draw_affine(draw: Any, g: GraphBuilder) -> None:
    rank = len(g.shape)
    kinds = ["Mul", "Add", "Sub", "Div"] + (["BatchNormalization"] * 2 if rank >= 2 else [])
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if kind == "BatchNormalization":
        c = g.shape[1]
        params = [
            g.const("gamma", rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c)),
            g.const("beta", rng.normal(size=c)),
            g.const("mean", rng.normal(size=c)),
            g.const("var", rng.uniform(0.2, 3.0, c)),
        ]
        g.add("BatchNormalization", [g.current, *params], epsilon=1e-3)
        return
    axis = draw(st.one_of(st.none(), st.integers(0, rank - 1)))
    if axis is None:
        shape: tuple[int, ...] = draw(st.sampled_from([(), (1,)]))
    elif draw(st.booleans()):
        shape = (g.shape[axis],) + (1,) * (rank - 1 - axis)  # aligned from the back
    else:
        shape = tuple(g.shape[axis] if a == axis else 1 for a in range(rank))
    size = int(np.prod(shape))
    if kind in ("Mul", "Div"):
        values = rng.uniform(0.5, 2.0, size) * rng.choice([-1, 1], size)
    else:
        values = rng.normal(size=size)
    constant = g.const("k", values.reshape(shape))
    constant_first = draw(st.booleans()) and kind != "Div"
    g.add(kind, [constant, g.current] if constant_first else [g.current, constant])


def draw_affines(draw: Any, g: GraphBuilder, most: int) -> None:
    for _ in range(draw(st.integers(0, most))):
        draw_affine(draw, g)


def draw_linear(draw: Any, g: GraphBuilder) -> None:
    rank = len(g.shape)
    kinds = {2: ["Gemm", "MatMul"], 3: ["Conv", "MatMul"], 4: ["Conv", "ConvTranspose", "MatMul"]}
    kind = draw(st.sampled_from(kinds.get(rank, ["MatMul"])))
    {
        "Conv": draw_conv,
        "ConvTranspose": draw_conv_transpose,
        "Gemm": draw_gemm,
        "MatMul": draw_matmul,
    }[kind](draw, g)


def draw_twin(draw: Any, g: GraphBuilder, linear: onnx.NodeProto) -> None:
    """A second node like ``linear`` that reads the same input and the same weight, with an
    affine of its own, added to the current value when the shapes agree: a shared weight must
    be copied before one of the two folds changes it."""
    twin = g.fresh("twin")
    g.nodes.append(
        helper.make_node(
            linear.op_type, list(linear.input), [twin], name=twin, domain=linear.domain
        )
    )
    g.nodes[-1].attribute.extend(linear.attribute)
    g.shapes[twin] = g.shapes[linear.output[0]]
    main, main_shape = g.current, g.shape
    g.current, g.shape = twin, g.shapes[twin]
    draw_affine(draw, g)
    if g.shape == main_shape:
        g.add("Add", [main, g.current])
    else:
        g.extra_outputs.append(g.current)
        g.current, g.shape = main, main_shape
    g.description.append(f"twin of {linear.name}")


@st.composite
def random_graphs(draw: Any) -> tuple[onnx.ModelProto, str]:
    dtype = draw(st.sampled_from(DTYPES))
    rank = draw(st.sampled_from([2, 3, 4]))
    shape = [2, draw(st.integers(1, 6))] + [draw(st.integers(3, 6)) for _ in range(rank - 2)]
    g = GraphBuilder(dtype, list(shape), input_shape=list(shape))
    g.shape = list(shape)
    for block in range(draw(st.integers(1, 2))):
        if block > 0 and draw(st.booleans()):
            g.add("Relu", [g.current])
        draw_affines(draw, g, 2)
        draw_linear(draw, g)
        linear = g.nodes[-1] if g.nodes[-1].op_type != "Add" else g.nodes[-2]
        for _ in range(draw(st.integers(0, 2))):
            draw_layout(draw, g)
        draw_affines(draw, g, 3)
        if draw(st.integers(0, 3)) == 0:
            draw_twin(draw, g, linear)
        if draw(st.integers(0, 7)) == 0:
            g.overridable.append(linear.input[1])  # its weight can be overridden at run time
    # Intermediate values that are also graph outputs, or read by a second node: a fold must
    # not change what they show.
    for name in draw(st.lists(st.sampled_from(sorted(g.shapes)), max_size=2, unique=True)):
        if draw(st.booleans()):
            g.extra_outputs.append(name)
        else:
            side = g.fresh("side")
            g.nodes.append(helper.make_node("Relu", [name], [side], name=side))
            g.shapes[side] = g.shapes[name]
            g.extra_outputs.append(side)
        g.description.append(f"output {g.extra_outputs[-1]}")
    proto = g.model()
    onnx.checker.check_model(proto, full_check=True)
    return proto, f"{np.dtype(dtype).name} {shape}: " + " ; ".join(g.description)


def check_fold(proto: onnx.ModelProto, *, shapes: bool = True) -> FoldPass | None:
    """The property, for one graph (also used by benchmarks/property_run.py); returns the
    fold result, or ``None`` when the fold raised one of bnfold's own errors. With ``shapes``
    the model gets inferred shapes first, as ``load_onnx`` gives it; without, layouts are
    unproven and the fold must decline them."""
    with_shapes = onnx.ModelProto()
    with_shapes.CopyFrom(proto)
    if shapes:
        add_inferred_shapes(with_shapes)  # as load_onnx does: shapes prove layouts
    model = ir.serde.deserialize_model(with_shapes)
    feeds = random_inputs(input_specs(model), seed=0)
    expected = run_model(proto.SerializeToString(), feeds)
    try:
        result = fold_model(model)
    except BnfoldError:
        return None
    folded = ir.serde.serialize_model(model)
    onnx.checker.check_model(folded, full_check=True)
    for entry in result.entries:
        assert entry.folded or entry.reason is not None, entry
    check = compare_outputs(expected, run_model(model, feeds))
    assert check.passed, f"max rel {check.max_rel:.3g}; " + "; ".join(
        f"{e.name}: {e.outcome.value} {e.target} {e.via}" for e in result.entries
    )
    return result


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(random_graphs())
def test_fold_matches_or_leaves_with_a_reason(graph: tuple[onnx.ModelProto, str]) -> None:
    proto, description = graph
    try:
        check_fold(proto, shapes=len(description) % 4 != 0)  # a quarter without shapes
    except AssertionError as error:
        raise AssertionError(f"{description}\n{error}") from error


def test_folded_graph_output_keeps_its_type_without_inferred_shapes() -> None:
    """Found by the property: Gemm -> Mul where the Mul's output is the graph output, in a
    model without value_info. The Gemm output took the graph output's name but not its type,
    and the folded model failed the ONNX checker."""
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w"], ["g"], name="gemm"),
            helper.make_node("Mul", ["g", "k"], ["y"], name="scale"),
        ],
        "gemm_mul",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 1])],
        [
            numpy_helper.from_array(np.full((3, 1), 0.5, np.float32), "w"),
            numpy_helper.from_array(np.array(2.0, np.float32), "k"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = TEST_IR_VERSION
    result = check_fold(proto, shapes=False)
    assert result is not None and [e.outcome.value for e in result.entries] == [
        "folded_into_previous"
    ]
    assert result.model is not None
    output = ir.serde.serialize_model(result.model).graph.output[0]
    assert output.name == "y"
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in output.type.tensor_type.shape.dim] == [2, 1]


def test_chain_after_a_batchnorm_folded_in_the_same_pass() -> None:
    """Found by the property run: ``Conv -> BN``, the BN read by a Relu (a second output) and
    by ``Mul(scalar) -> MatMul``. The BN folds backward into the Conv first; the Mul chain,
    found before that, then folded forward into the MatMul with the BN's removed output as
    its input, and the folded graph read a value nothing produced."""
    rng = np.random.default_rng(0)
    g = GraphBuilder(np.float32, [2, 3, 4, 4], input_shape=[2, 3, 4, 4])
    g.add("Conv", [g.current, g.const("w", rng.normal(size=(4, 3, 1, 1)))])
    params = [
        rng.uniform(0.5, 2, 4),
        rng.normal(size=4),
        rng.normal(size=4),
        rng.uniform(0.5, 2, 4),
    ]
    g.add("BatchNormalization", [g.current, *(g.const("p", array) for array in params)])
    normalised = g.current
    g.add("Mul", [g.current, g.const("k", np.array(1.5))])
    g.add("MatMul", [g.current, g.const("m", rng.normal(size=(4, 5)))])
    g.nodes.append(helper.make_node("Relu", [normalised], ["side"], name="side"))
    g.shapes["side"] = [2, 4, 4, 4]
    g.extra_outputs.append("side")
    proto = g.model()
    onnx.checker.check_model(proto, full_check=True)
    result = check_fold(proto)
    assert result is not None
    outcomes = {entry.ops[0]: entry.outcome.value for entry in result.entries}
    assert outcomes["BatchNormalization"] == "folded_into_previous"


def test_scalar_affine_through_a_reshape_after_matmul() -> None:
    """Found by the property run: ``MatMul -> Reshape [..., N, 1] -> Sub(scalar) ->
    Mul(scalar)``. The fold wrote the shift as an ``[N]`` vector on the last axis, which is
    1 after the Reshape, so the new bias Add broadcast the output to ``[..., N, N]``."""
    rng = np.random.default_rng(0)
    g = GraphBuilder(np.float32, [2, 3, 6, 3], input_shape=[2, 3, 6, 3])
    g.add("MatMul", [g.current, g.const("w", rng.normal(size=(3, 5)))])
    g.add("Reshape", [g.current, g.const("shape", np.array([2, 3, 6, 5, 1]), np.int64)])
    g.add("Sub", [g.current, g.const("k", np.array(0.75))])
    g.add("Mul", [g.current, g.const("k", np.array(-1.5))])
    proto = g.model()
    onnx.checker.check_model(proto, full_check=True)
    result = check_fold(proto)
    assert result is not None and result.model is not None
    assert [entry.outcome.value for entry in result.entries] == ["folded_into_previous"]
    assert [node.op_type for node in result.model.graph] == ["MatMul", "Reshape", "Add"]
