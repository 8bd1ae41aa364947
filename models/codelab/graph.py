"""A codelab graph file in, what importing it needs out: architecture, tensors, input size, classes.

    graph = read_poets_graph(Path("retrained_graph.pb"))          # architecture from the graph
    graph = read_poets_graph(path, "mobilenet_0.25_128")          # checked against the graph
    graph = read_poets_graph(path, output_tensor="MobilenetV1/Predictions/Reshape_1")

"TensorFlow for Poets 2"'s retrain.py wrote a TF1 frozen GraphDef: its base network (InceptionV3,
fed at `Mul:0` with 299x299 pixels scaled (x - 128) / 128, or MobileNet v1, fed at `input:0`
with pixels scaled (x - 127.5) / 127.5) with the retrained `final_result` softmax on top. The
architecture is read from the graph (MobileNet's op names, input size and first layer's width;
InceptionV3's `pool_3` bottleneck), and a declared one must agree with it. Every failure is a
`UsageError` of one line naming the file and what to do. Needs TensorFlow.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowers.models.errors import UsageError
from flowers.models.networks import NETWORKS

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_TENSOR = "final_result:0"
INCEPTION_V3 = "inception_v3"
MOBILENET = "mobilenet"
# MobileNet v1's first convolution has 32 * alpha filters: the codelab's alpha names by width.
MOBILENET_ALPHAS = {32: "1.0", 24: "0.75", 16: "0.50", 8: "0.25"}
MOBILENET_FIRST_WEIGHTS = "MobilenetV1/Conv2d_0/weights:0"


@dataclass(frozen=True)
class CodelabFamily:
    """How retrain.py fed one family of base networks: the tensor and the pixel scaling."""

    name: str
    input_tensor: str
    mean: float
    std: float

    def describe_scaling(self) -> str:
        return f"(x - {self.mean:g}) / {self.std:g}"


FAMILIES = {
    INCEPTION_V3: CodelabFamily(INCEPTION_V3, "Mul:0", 128.0, 128.0),
    MOBILENET: CodelabFamily(MOBILENET, "input:0", 127.5, 127.5),
}
ARCHITECTURE_HINT = "inception_v3 or mobilenet_<alpha>_<size> (as retrain.py's --architecture)"


@dataclass(frozen=True)
class PoetsGraph:
    """A parsed codelab graph and what was found in it."""

    path: Path
    sha256: str
    graph_def: Any  # tf.compat.v1.GraphDef
    architecture: str
    architecture_from: str  # "graph" or "--architecture"
    family: CodelabFamily
    input_size: int
    output_tensor: str
    classes: int

    @property
    def input_tensor(self) -> str:
        return self.family.input_tensor


def tensor_name(name: str) -> str:
    """`name` as a tensor name: `final_result` -> `final_result:0`."""
    return name if ":" in name else f"{name}:0"


def parse_graph_def(path: Path, data: bytes) -> Any:
    """The GraphDef in `data`, or `UsageError` saying the file is not one."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise UsageError(f"{path} is not a TensorFlow GraphDef ({exc}): pass the "
                         "retrained_graph.pb that the codelab's retrain.py wrote") from None
    if not graph_def.node or not all(node.op for node in graph_def.node):
        raise UsageError(f"{path} is not a TensorFlow GraphDef (no graph nodes in its "
                         f"{len(data)} bytes): pass the retrained_graph.pb that the codelab's "
                         "retrain.py wrote")
    return graph_def


def _family_in_graph(names: set[str]) -> str | None:
    if any(name.startswith("MobilenetV1/") for name in names):
        return MOBILENET
    if "pool_3/_reshape" in names or "pool_3" in names:
        return INCEPTION_V3
    return None


def _declared_family(architecture: str) -> str:
    if architecture == INCEPTION_V3:
        return INCEPTION_V3
    spec = NETWORKS.get(architecture)
    if spec is not None and spec.family == MOBILENET:
        return MOBILENET
    raise UsageError(f"--architecture {architecture!r} is not one the codelab trained: "
                     f"choose {ARCHITECTURE_HINT}, or leave it out to read it from the graph")


def _static_shape(graph: Any, name: str) -> list[int | None] | None:
    try:
        shape = graph.get_tensor_by_name(name).shape
    except (KeyError, ValueError):
        return None
    return None if shape.rank is None else list(shape.as_list())


def _mobilenet_alpha(graph: Any) -> str | None:
    shape = _static_shape(graph, MOBILENET_FIRST_WEIGHTS)
    return MOBILENET_ALPHAS.get(shape[-1] or 0) if shape else None


def _input_size(graph: Any, path: Path, family: CodelabFamily) -> int:
    shape = _static_shape(graph, family.input_tensor)
    if shape is None:
        raise UsageError(f"{path} has no tensor {family.input_tensor}, where retrain.py fed a "
                         f"{family.name} graph: is it a graph the codelab retrained?")
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise UsageError(f"{path}: {family.input_tensor} has shape {shape}, not the "
                         "(1, size, size, 3) pixels retrain.py fed: is it a codelab graph?")
    return int(shape[1])


def _architecture(graph: Any, path: Path, family: str, size: int, declared: str | None) -> str:
    """The architecture's name, from the graph; a declared one must agree with it."""
    if family == INCEPTION_V3:
        found: str | None = INCEPTION_V3
    else:
        alpha = _mobilenet_alpha(graph)
        found = f"mobilenet_{alpha}_{size}" if alpha else None
    if declared is not None:
        spec = NETWORKS[declared]
        if spec.input_size != size:
            raise UsageError(f"{path} takes {size}x{size} pixels at {FAMILIES[family].input_tensor}"
                             f", but {declared} takes {spec.input_size}: pass --architecture "
                             f"{found or ARCHITECTURE_HINT}, or leave it out")
        if found is not None and found != declared:
            raise UsageError(f"{path} is a {found} graph, not {declared}: pass --architecture "
                             f"{found}, or leave it out")
        return declared
    if found is None or found not in NETWORKS:
        raise UsageError(f"cannot tell which {family} {path} is ({size}x{size} pixels): pass "
                         f"--architecture {ARCHITECTURE_HINT}")
    return found


def read_poets_graph(path: Path, architecture: str | None = None,
                     output_tensor: str | None = None) -> PoetsGraph:
    """Parses and checks a codelab graph file (see the module docstring)."""
    import tensorflow as tf

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    graph_def = parse_graph_def(path, data)
    graph = tf.Graph()
    with graph.as_default():
        try:
            tf.graph_util.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError) as exc:
            raise UsageError(f"{path} is a GraphDef that TensorFlow cannot load "
                             f"({str(exc).splitlines()[0]}): is it a frozen graph?") from None
    found = _family_in_graph({node.name for node in graph_def.node})
    declared = _declared_family(architecture) if architecture else None
    if found and declared and found != declared:
        raise UsageError(
            f"{path} is an {found} graph (fed at {FAMILIES[found].input_tensor}), but "
            f"--architecture {architecture} is {declared}: pass the graph's architecture, or "
            "leave --architecture out to read it from the graph")
    family_name = found or declared
    if family_name is None:
        raise UsageError(f"cannot tell the architecture of {path} (neither MobileNet v1 nor "
                         f"InceptionV3 op names): pass --architecture {ARCHITECTURE_HINT}")
    family = FAMILIES[family_name]
    size = _input_size(graph, path, family)
    name = _architecture(graph, path, family_name, size, architecture)
    output = tensor_name(output_tensor or DEFAULT_OUTPUT_TENSOR)
    shape = _static_shape(graph, output)
    if shape is None:
        raise UsageError(f"{path} has no tensor {output}: the codelab names its retrained "
                         "softmax final_result; for another graph pass --output-tensor NAME")
    if len(shape) != 2 or not shape[-1]:
        raise UsageError(f"{path}: {output} has shape {shape}, not (photos, classes): pass "
                         "the --output-tensor of the graph's class probabilities")
    log.info("%s: %s, %s at %dx%d, %s of %d classes", path, name, family.input_tensor, size,
             size, output, shape[-1])
    return PoetsGraph(path=path, sha256=hashlib.sha256(data).hexdigest(), graph_def=graph_def,
                      architecture=name,
                      architecture_from="--architecture" if architecture else "graph",
                      family=family, input_size=size, output_tensor=output,
                      classes=int(shape[-1]))
