"""TensorFlow SavedModel directories.

A Keras 2 SavedModel (``model.save('dir')`` in tf.keras <= 2.15 or tf_keras; it holds
``keras_metadata.pb``) is rebuilt as a Keras model with tf_keras, so it folds and can be
written as .keras/.h5. Any other SavedModel (``tf.saved_model.save``, Keras 3
``model.export``) is wrapped in a one-layer Keras 3 model that calls its serving signature:
it runs and converts to ONNX like any Keras model, and the ONNX fold folds what tf2onnx wrote.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from bnfold.errors import InputError
from bnfold.foldlog import FoldEntry, Outcome, Reason
from bnfold.frontends.keras.loading import (
    StoredModel,
    load_stored,
    refuse_code_layers,
    remember,
)
from bnfold.frontends.keras.runtime import first_line, import_keras, import_tf_keras, quiet_keras

SERVING_SIGNATURE = "serving_default"
# Set on the wrapper layer: a model holding it has no Keras layers to save.
SIGNATURE_MARK = "_bnfold_saved_model_signature"


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")
    )


def holds_signature_only(model: Any) -> bool:
    """True for the wrapper of a SavedModel without a Keras model in it."""
    return any(getattr(layer, SIGNATURE_MARK, False) for layer in getattr(model, "layers", []))


def _keras2_root_config(path: Path) -> Any:
    """The root model's config from ``keras_metadata.pb`` (for the Lambda and custom-class
    checks); ``{}`` when the metadata cannot be read, and tf_keras then says what is wrong."""
    if import_tf_keras() is None:  # imports TensorFlow quietly first
        return {}
    from tf_keras.protobuf import saved_metadata_pb2

    metadata = saved_metadata_pb2.SavedMetadata()
    try:
        metadata.ParseFromString((path / "keras_metadata.pb").read_bytes())
        for node in metadata.nodes:
            if node.node_path == "root":
                root = json.loads(node.metadata)
                return {"class_name": root.get("class_name"), "config": root.get("config")}
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read keras_metadata.pb: {first_line(error)}") from error
    return {}


@functools.cache
def _signature_layer_class() -> type:
    keras, _ = import_keras()

    class SavedModelSignature(keras.layers.Layer):  # type: ignore[name-defined]
        """Calls a SavedModel signature with keyword arguments, outputs in key order."""

        def __init__(self, function: Any, arguments: list[str], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.function = function
            self.arguments = arguments
            setattr(self, SIGNATURE_MARK, True)

        def call(self, inputs: Any) -> list[Any]:
            values = inputs if isinstance(inputs, list | tuple) else [inputs]
            outputs = self.function(**dict(zip(self.arguments, values, strict=True)))
            return [outputs[key] for key in sorted(outputs)]

    return SavedModelSignature


def _signature_model(path: Path) -> Any:
    """A Keras 3 model whose one layer calls the serving signature; inputs and outputs named
    after the signature's arguments and output keys."""
    keras, tf = import_keras()
    try:
        with quiet_keras():
            loaded = tf.saved_model.load(str(path))
    except Exception as error:
        raise InputError(
            f"{path}: TensorFlow cannot load this SavedModel: {first_line(error)}"
        ) from error
    signatures = dict(loaded.signatures)
    if not signatures:
        raise InputError(f"{path}: the SavedModel has no signature to run (serving_default)")
    name = SERVING_SIGNATURE if SERVING_SIGNATURE in signatures else sorted(signatures)[0]
    function = signatures[name]
    _, arguments = function.structured_input_signature
    names = sorted(arguments)
    inputs = [
        keras.Input(
            batch_shape=tuple(arguments[key].shape), dtype=arguments[key].dtype.name, name=key
        )
        for key in names
    ]
    layer = _signature_layer_class()(function, names, name=f"saved_model_{name}")
    layer.loaded = loaded  # keeps the variables the signature captures alive
    with quiet_keras():
        outputs = layer(inputs if len(inputs) > 1 else inputs[0])
        keys = sorted(function.structured_outputs)
        taken = set(names)
        named = []
        for key, tensor in zip(keys, outputs, strict=True):
            label = key if key not in taken else f"{key}_output"
            taken.add(label)
            named.append(keras.layers.Identity(name=label)(tensor))
        return keras.Model(inputs, named, name="saved_model")


def load_saved_model(path: Path, *, allow_unsafe: bool = False) -> Any:
    """A SavedModel directory as a Keras model (see the module docstring)."""
    if not is_saved_model(path):
        raise InputError(
            f"{path}: a directory that is not a TensorFlow SavedModel (no saved_model.pb in it)"
        )
    if (path / "keras_metadata.pb").is_file():
        config = _keras2_root_config(path)
        refuse_code_layers(path, config, allow_unsafe)
        return load_stored(StoredModel(path, "SavedModel", config, "2"), allow_unsafe)
    model = _signature_model(path)
    return remember(model, "TensorFlow SavedModel without a Keras model (its serving signature)")


_FUSED_BATCHNORMS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})
# tf.nn.batch_normalization (a tf.keras BN on a non-4-D input) writes its ops in this scope.
_BATCHNORM_RSQRT = "/batchnorm/Rsqrt"
_FUNCTION_ATTRIBUTES = ("f", "then_branch", "else_branch", "body", "cond")


def _batchnorm_scope(node: Any) -> str | None:
    if node.op in _FUSED_BATCHNORMS:
        return str(node.name).rsplit("/", 1)[0]
    if node.op == "Rsqrt" and str(node.name).endswith(_BATCHNORM_RSQRT):
        return str(node.name)[: -len(_BATCHNORM_RSQRT)]
    return None


def signature_batchnorms(model: Any) -> list[str]:
    """The name scopes of the BatchNormalization ops in a wrapped SavedModel's signature
    (``model/conv1_bn``), found in its graph and every function it calls: TensorFlow writes
    a BN as FusedBatchNormV3, or as tf.nn.batch_normalization's ops on a non-4-D input."""
    layer = next(layer for layer in model.layers if getattr(layer, SIGNATURE_MARK, False))
    graph_def = layer.function.graph.as_graph_def()
    library = {function.signature.name: function for function in graph_def.library.function}
    scopes: list[str] = []
    visited: set[str] = set()
    pending = [list(graph_def.node)]
    while pending:
        for node in pending.pop():
            scope = _batchnorm_scope(node)
            if scope is not None and scope not in scopes:
                scopes.append(scope)
            for attribute in _FUNCTION_ATTRIBUTES:
                called = node.attr[attribute].func.name if attribute in node.attr else ""
                if called in library and called not in visited:
                    visited.add(called)
                    pending.append(list(library[called].node_def))
    return scopes


def signature_entries(model: Any) -> list[FoldEntry]:
    """One entry per BN op of a wrapped SavedModel's signature, left by the Keras pass (there
    are no Keras layers to rewrite); the ONNX pass then says where each went."""
    return [
        FoldEntry(
            scope,
            ["BatchNormalization"],
            Outcome.LEFT,
            reason=Reason.UNSUPPORTED_LAYER,
            detail="a SavedModel signature holds TensorFlow ops, not Keras layers",
            stage="keras",
        )
        for scope in signature_batchnorms(model)
    ]
