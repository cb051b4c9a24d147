"""Fuzz the ONNX loader: mutated model bytes through ``bnfold.inspect`` and ``bnfold.fold``.

    python benchmarks/fuzz_loader.py --iterations 5000 --time-limit 600 [--seed 0]

Each iteration takes one of the demo models in models/*.onnx and mutates its bytes: flips
bytes, overwrites a run with random bytes, truncates, splices the head of one model onto
the tail of another, duplicates or deletes a run. The result is written to a temporary
folder and given to ``bnfold.inspect(path)`` and ``bnfold.fold(path, output=...)`` (with the
check). Any exception that is not a ``bnfold.BnfoldError`` escaped the loader: it is a bug
and is recorded with the mutation that caused it, so it can be replayed (``--replay``).
Also checked after every call: the input is unchanged, and a failed fold left no output
and no ``.bnfold-*`` temporary folder.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper

import bnfold
from bnfold.errors import BnfoldError

MODELS = Path(__file__).resolve().parents[1] / "models"


def demo_models() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(MODELS.glob("*.onnx"))}


def _flip(rng: np.random.Generator, data: bytes, others: list[bytes]) -> bytes:
    array = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        position = int(rng.integers(0, len(array)))
        array[position] ^= 1 << int(rng.integers(0, 8))
    return bytes(array)


def _overwrite(rng: np.random.Generator, data: bytes, others: list[bytes]) -> bytes:
    start = int(rng.integers(0, len(data)))
    length = int(rng.integers(1, 64))
    noise = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    return data[:start] + noise + data[start + length :]


def _truncate(rng: np.random.Generator, data: bytes, others: list[bytes]) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def _splice(rng: np.random.Generator, data: bytes, others: list[bytes]) -> bytes:
    other = others[int(rng.integers(0, len(others)))]
    return data[: int(rng.integers(0, len(data)))] + other[int(rng.integers(0, len(other))) :]


def _duplicate(rng: np.random.Generator, data: bytes, others: list[bytes]) -> bytes:
    start = int(rng.integers(0, len(data)))
    run = data[start : start + int(rng.integers(1, 256))]
    return data[:start] + run + data[start:]


def _delete(rng: np.random.Generator, data: bytes, others: list[bytes]) -> bytes:
    start = int(rng.integers(0, len(data)))
    return data[:start] + data[start + int(rng.integers(1, 256)) :]


def _varint(rng: np.random.Generator, data: bytes, others: list[bytes]) -> bytes:
    """Replace a byte that looks like a small varint (a dim, a length) with a large one."""
    array = bytearray(data)
    positions = [i for i, byte in enumerate(array[:-1]) if 0 < byte < 0x80]
    if not positions:
        return data
    position = positions[int(rng.integers(0, len(positions)))]
    big = bytes([0xFF, 0xFF, 0xFF, int(rng.integers(1, 0x80))])
    return bytes(array[:position]) + big + bytes(array[position + 1 :])


OP_TYPES = (
    "Conv",
    "Gemm",
    "MatMul",
    "BatchNormalization",
    "Relu",
    "Add",
    "Mul",
    "Reshape",
    "Transpose",
    "Flatten",
    "ConvTranspose",
    "Identity",
    "Softmax",
    "NoSuchOp",
)
ODD_INTS = (0, -1, 1, 2, 3, 7, 2**31 - 1, -(2**31), 2**40)


def _structured(rng: np.random.Generator, data: bytes, others: list[bytes]) -> bytes:
    """Parse the model and change one field (a dim, a type, an attribute, an input name, an op
    type, a domain, the data): mutations that get past the protobuf decoder."""
    model = onnx.ModelProto.FromString(data)
    graph = model.graph
    choice = int(rng.integers(0, 9))
    pick = lambda items: items[int(rng.integers(0, len(items)))]  # noqa: E731
    tensor = pick(graph.initializer) if graph.initializer else None
    node = pick(graph.node) if graph.node else None
    if choice == 0 and tensor is not None and tensor.dims:
        tensor.dims[int(rng.integers(0, len(tensor.dims)))] = int(pick(ODD_INTS))
    elif choice == 1 and tensor is not None:
        tensor.data_type = int(rng.integers(0, 25))
    elif choice == 2 and tensor is not None and tensor.raw_data:
        tensor.raw_data = tensor.raw_data[: int(rng.integers(0, len(tensor.raw_data)))]
    elif choice == 3 and node is not None and node.attribute:
        attribute = pick(node.attribute)
        if attribute.ints:
            attribute.ints[int(rng.integers(0, len(attribute.ints)))] = int(pick(ODD_INTS))
        elif attribute.type == onnx.AttributeProto.FLOAT:
            attribute.f = float(pick((0.0, -1.0, float("nan"), float("inf"), 1e30)))
        else:
            attribute.i = int(pick(ODD_INTS))
    elif choice == 4 and node is not None and node.input:
        names = [value for n in graph.node for value in n.output] + ["", "nowhere"]
        node.input[int(rng.integers(0, len(node.input)))] = pick(names)
    elif choice == 5 and node is not None:
        node.op_type = pick(OP_TYPES)
    elif choice == 6 and node is not None:
        node.domain = pick(("com.example", "ai.onnx.ml", "com.microsoft"))
    elif choice == 7 and graph.node:
        del graph.node[int(rng.integers(0, len(graph.node)))]
    elif choice == 8 and tensor is not None:
        array = onnx.numpy_helper.to_array(tensor).copy()
        if array.size and array.dtype.kind == "f":
            array.reshape(-1)[int(rng.integers(0, array.size))] = pick(
                (np.nan, np.inf, -np.inf, 0.0, 1e30, -1e-30)
            )
            tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))
    return model.SerializeToString()


MUTATIONS: dict[str, Callable[[np.random.Generator, bytes, list[bytes]], bytes]] = {
    "structured": _structured,
    "flip": _flip,
    "overwrite": _overwrite,
    "truncate": _truncate,
    "splice": _splice,
    "duplicate": _duplicate,
    "delete": _delete,
    "varint": _varint,
}


@dataclass
class Outcome:
    iteration: int
    model: str
    mutation: str
    stage: str  # "inspect" or "fold"
    result: str  # "ok", "BnfoldError:<exit code>", or the escaped exception
    escaped: bool
    detail: str = ""


def mutate(iteration: int, seed: int, models: dict[str, bytes]) -> tuple[str, str, bytes]:
    """The ``iteration``-th mutation of run ``seed``: deterministic, so it can be replayed."""
    rng = np.random.default_rng([seed, iteration])
    names = sorted(models)
    name = names[int(rng.integers(0, len(names)))]
    kinds = sorted(MUTATIONS)
    kind = "structured" if rng.random() < 0.5 else kinds[int(rng.integers(0, len(kinds)))]
    data = MUTATIONS[kind](rng, models[name], [models[n] for n in names])
    return name, kind, data


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".bnfold-")]


def run_one(iteration: int, seed: int, models: dict[str, bytes], folder: Path) -> list[Outcome]:
    name, kind, data = mutate(iteration, seed, models)
    source = folder / "fuzzed.onnx"
    source.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    out = folder / "out.onnx"
    outcomes = []
    for stage in ("inspect", "fold"):
        out.unlink(missing_ok=True)
        try:
            if stage == "inspect":
                bnfold.inspect(source)
            else:
                bnfold.fold(source, output=out)
            result, escaped, detail = "ok", False, ""
        except BnfoldError as error:
            result, escaped, detail = f"BnfoldError:{error.exit_code}", False, str(error)
            if "\n" in str(error):
                result, escaped = "multi-line error", True
            if out.exists():
                result, escaped, detail = "output written despite an error", True, str(error)
        except Exception as error:  # the bug this script looks for
            result, escaped = f"{type(error).__name__}", True
            detail = "".join(traceback.format_exception(error)[-3:]).strip()
        if hashlib.sha256(source.read_bytes()).hexdigest() != digest:
            result, escaped, detail = "input modified", True, ""
        if _leftovers(folder):
            result, escaped, detail = "temporary folder left", True, str(_leftovers(folder))
        outcomes.append(Outcome(iteration, name, kind, stage, result, escaped, detail))
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replay", type=int, default=None, help="run one iteration, verbosely")
    parser.add_argument(
        "--trace", action="store_true", help="name each iteration on stderr (to find a crash)"
    )
    args = parser.parse_args()
    models = demo_models()
    with tempfile.TemporaryDirectory(prefix="bnfold-fuzz-") as scratch:
        folder = Path(scratch)
        if args.replay is not None:
            for outcome in run_one(args.replay, args.seed, models, folder):
                print(outcome)
            return 0
        started = time.perf_counter()
        results: collections.Counter[str] = collections.Counter()
        escaped: list[Outcome] = []
        done = 0
        for iteration in range(args.iterations):
            if time.perf_counter() - started > args.time_limit:
                break
            if args.trace:
                print(f"iteration {iteration}", file=sys.stderr, flush=True)
            for outcome in run_one(iteration, args.seed, models, folder):
                results[f"{outcome.stage}: {outcome.result}"] += 1
                if outcome.escaped:
                    escaped.append(outcome)
            done += 1
        elapsed = time.perf_counter() - started
    print(f"{done} mutated models ({len(models)} demo models, seed {args.seed}) in {elapsed:.0f} s")
    for key, count in sorted(results.items()):
        print(f"  {key}: {count}")
    print(f"escaped exceptions: {len(escaped)}")
    for outcome in escaped[:20]:
        print(
            f"- iteration {outcome.iteration} ({outcome.model}, {outcome.mutation}, "
            f"{outcome.stage}): {outcome.result}\n    {outcome.detail}"
        )
    return 1 if escaped else 0


if __name__ == "__main__":
    sys.exit(main())
