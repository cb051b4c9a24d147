"""Keras to ONNX with tf2onnx: trace without XLA, freeze, convert, validate, and give the
ONNX inputs and outputs their Keras names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bnfold.errors import InputError
from bnfold.frontends.keras.model_io import (
    _flatten_outputs,
    keras_input_specs,
    keras_output_names,
)
from bnfold.frontends.keras.runtime import (
    MAX_ONNX_IR_VERSION,
    first_line,
    import_keras,
    import_tf2onnx,
    quiet_keras,
)

if TYPE_CHECKING:
    import onnx
    import onnx_ir

_TF_CALL_OPS = frozenset({"StatefulPartitionedCall", "PartitionedCall"})


def _onnx_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g.node:
                yield from _onnx_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _onnx_nodes(sub)


def _tf_call_nodes(proto: onnx.ModelProto) -> list[str]:
    return [node.name for node in _onnx_nodes(proto.graph) if node.op_type in _TF_CALL_OPS]


# Function attributes that keep TensorFlow's optimiser from inlining a call (Keras compiles
# grouped and channels_first 3-D convolutions with XLA on CPU and marks them so).
_XLA_ATTRIBUTES = ("_XlaMustCompile", "_XlaCompile", "_XlaScope", "_noinline")


def _captures_tensors(tf: Any, function: Any, arguments: int) -> bool:
    """True when the traced function captures tensors that are not variables (EfficientNet's
    Normalization mean and variance): tf2onnx turns each into an extra graph input, while
    freezing makes them constants."""
    captured = function.get_concrete_function().inputs[arguments:]
    return any(tensor.dtype != tf.dtypes.resource for tensor in captured)


def _convert_frozen(tf: Any, tf2onnx: Any, function: Any, opset: int | None) -> Any:
    """tf2onnx on the frozen graph (variables and captured tensors become constants) with the
    XLA marks removed, so that the XLA-compiled functions are inlined and their ops (a grouped
    Conv2D, an NCDHW Conv3D) converted like any other; tf2onnx keeps such calls as TF nodes
    otherwise."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(
        function.get_concrete_function(), lower_control_flow=False, aggressive_inlining=True
    )
    graph_def = frozen.graph.as_graph_def(add_shapes=True)

    def unmark(attributes: Any) -> None:
        for key in _XLA_ATTRIBUTES:
            if key in attributes:
                del attributes[key]

    for node in graph_def.node:
        unmark(node.attr)
    for library_function in graph_def.library.function:
        unmark(library_function.attr)
        for node in library_function.node_def:
            unmark(node.attr)
    inputs = [t.name for t in frozen.inputs if t.dtype != tf.dtypes.resource]
    outputs = [t.name for t in frozen.outputs if t.dtype != tf.dtypes.resource]
    proto, _ = tf2onnx.convert.from_graph_def(
        graph_def, input_names=inputs, output_names=outputs, opset=opset
    )
    return proto


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.g.node:
                yield from _graphs(attribute.g)
            for sub in attribute.graphs:
                yield from _graphs(sub)


def _erfc_as_erf(proto: onnx.ModelProto) -> None:
    """tf2onnx writes TensorFlow's Erfc (Keras' exact GELU: ``0.5 x erfc(-x / sqrt 2)``) as an
    ONNX op that does not exist; ``erfc(x) = 1 - erf(x)`` is written in its place."""
    from onnx import helper

    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    for graph in _graphs(proto.graph):
        nodes = []
        for node in graph.node:
            if node.op_type != "Erfc" or node.domain not in ("", "ai.onnx"):
                nodes.append(node)
                continue
            erf, one, typed = (f"{node.output[0]}/{part}" for part in ("erf", "one", "one_typed"))
            nodes += [
                helper.make_node("Erf", [node.input[0]], [erf], name=f"{node.name}/Erf"),
                helper.make_node("Constant", [], [one], value_float=1.0, name=f"{node.name}/One"),
            ]
            if opset >= 15:  # CastLike: the 1 takes x's dtype (float16 under mixed precision)
                cast = helper.make_node("CastLike", [one, node.input[0]], [typed])
                nodes.append(cast)
            else:
                typed = one
            nodes.append(helper.make_node("Sub", [typed, erf], list(node.output), name=node.name))
        del graph.node[:]
        graph.node.extend(nodes)


def _validate_onnx(proto: onnx.ModelProto) -> None:
    """Refuse what tf2onnx writes when it could not convert a part: TF call nodes, unknown ops."""
    import onnx

    for node in _onnx_nodes(proto.graph):
        if node.op_type in _TF_CALL_OPS:
            raise InputError(
                f"tf2onnx left a TensorFlow {node.op_type} node ('{node.name}') in the ONNX graph; "
                "tf2onnx cannot convert the function it calls"
            )
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            raise InputError(f"tf2onnx wrote the unknown ONNX op {node.op_type} ('{node.name}')")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise InputError(f"tf2onnx wrote an invalid ONNX model: {first_line(error)}") from error


def _name_boundary(graph: onnx_ir.Graph, values: list[Any], names: list[str]) -> None:
    """Give the graph's inputs and outputs their Keras names; an internal value that already
    has one of those names is renamed out of the way."""
    if len(set(names)) != len(names):
        raise InputError(f"the model's input and output names are not unique: {names}")
    for index, value in enumerate(values):
        value.name = f"__bnfold_boundary_{index}"
    internal = [value for node in graph for value in node.outputs]
    internal += list(graph.initializers.values())
    by_name = {value.name: value for value in internal if value.name}
    for value, name in zip(values, names, strict=True):
        clash = by_name.get(name)
        if clash is not None and clash is not value:
            suffix = 1
            while f"{name}__{suffix}" in by_name:
                suffix += 1
            clash.name = f"{name}__{suffix}"
            by_name[clash.name] = clash
        value.name = name
        by_name[name] = value


def keras_to_onnx(model: Any, *, opset: int | None = None) -> onnx_ir.Model:
    """Convert with tf2onnx through a ``tf.function`` traced without XLA (``jit_compile=False``).

    The batch dimension stays dynamic; ONNX inputs are named like ``keras_input_specs`` and
    outputs like ``keras_output_names``; IR version at most ``MAX_ONNX_IR_VERSION``.
    """
    import onnx_ir

    keras, tf = import_keras()
    tf2onnx = import_tf2onnx()
    specs = keras_input_specs(model)
    output_names = keras_output_names(model)
    signature = [
        tf.TensorSpec(
            shape=tuple(dim if isinstance(dim, int) else None for dim in spec.shape),
            dtype=tf.as_dtype(spec.dtype),
            # A placeholder: Keras allows names TensorFlow op names do not; renamed below.
            name=f"bnfold_input_{index}",
        )
        for index, spec in enumerate(specs)
    ]

    def call(*args: Any) -> tuple[Any, ...]:
        outputs = model(args[0] if len(args) == 1 else list(args), training=False)
        return tuple(_flatten_outputs(keras, outputs))

    function = tf.function(call, input_signature=signature, jit_compile=False, autograph=False)
    try:
        with quiet_keras():  # also Keras warnings from tracing the model
            if _captures_tensors(tf, function, len(signature)):
                proto = _convert_frozen(tf, tf2onnx, function, opset)
            else:
                proto, _ = tf2onnx.convert.from_function(
                    function, input_signature=signature, opset=opset
                )
                if _tf_call_nodes(proto):
                    proto = _convert_frozen(tf, tf2onnx, function, opset)
    except Exception as error:
        raise InputError(f"tf2onnx cannot convert the model: {first_line(error)}") from error
    proto.ir_version = min(proto.ir_version, MAX_ONNX_IR_VERSION)
    _erfc_as_erf(proto)
    _validate_onnx(proto)
    from bnfold.frontends.onnx import add_inferred_shapes

    # Shapes on the proto tf2onnx wrote: no second serialise and parse for inference.
    add_inferred_shapes(proto)
    ir_model = onnx_ir.from_proto(proto)
    graph_inputs = list(ir_model.graph.inputs)
    graph_outputs = list(ir_model.graph.outputs)
    if len(graph_inputs) != len(specs) or len(graph_outputs) != len(output_names):
        raise InputError(
            f"tf2onnx wrote {len(graph_inputs)} inputs and {len(graph_outputs)} outputs, "
            f"the Keras model has {len(specs)} and {len(output_names)}"
        )
    _name_boundary(
        ir_model.graph, graph_inputs + graph_outputs, [s.name for s in specs] + output_names
    )
    from bnfold.frontends.keras.saved_model import holds_signature_only

    if holds_signature_only(model):
        _shorten_call_names(ir_model.graph)
    return ir_model


def _shorten_call_names(graph: onnx_ir.Graph) -> None:
    """Drop the TensorFlow call scopes (``saved_model_1/.../StatefulPartitionedCall/``) from
    the node names of a converted SavedModel signature, so that the log names its layers
    (``functional_1/bn_1/batchnorm/mul``); a name that would clash keeps its scopes."""
    taken = {node.name for node in graph}
    for node in graph:
        name = node.name or ""
        short = name.rsplit("StatefulPartitionedCall/", 1)[-1]
        if short != name and short not in taken:
            taken.add(short)
            node.name = short
