"""Base networks by name: a registry of specs, and `build_base_network(name)` for a Keras model.

A spec keeps together what must agree: the Keras constructor, input size, bottleneck size and
the exact weight file name Keras uses. Every network here expects pixels scaled to [-1, 1];
the built model starts with that scaling, so it takes raw 0-255 RGB pixels.
TensorFlow is imported only when a network is built, so the registry is cheap to import.
`library_versions()` names the Python, TensorFlow and Keras that built a bundle's network.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowers.models.errors import UnknownArchitectureError, UsageError, WeightsUnavailableError

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

WEIGHTS_IMAGENET = "imagenet"
KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class NetworkSpec:
    """One base network: how to build it and what it takes and gives."""

    name: str
    family: str  # "inception_v3" | "mobilenet" | "mobilenet_v2"
    alpha: float
    input_size: int
    bottleneck_size: int
    weights_file: str
    weights_url: str
    # The scaling the network was trained with, applied inside the model: x * scale + offset.
    scale: float = 1 / 127.5
    offset: float = -1.0
    # Where the fine-tune recipe cuts the network: activations below it are cached, layers
    # above it are trained. About two thirds of the way up, where the features are still 14x14
    # (17x17 then 8x8 for InceptionV3) and most of the computation is already done.
    split_layer: str = "block_12_add"
    # Whether the photo stage runs the network on LiteRT (models/runtime/converted.py): about
    # twice as fast for the MobileNets' depthwise convolutions, no faster for InceptionV3
    # (bench/feature_runtime.py).
    litert_photo_stage: bool = True

    def describe(self) -> str:
        return f"{self.family} alpha={self.alpha:g} input={self.input_size}px"


def _mobilenet_v1(alpha_text: str, size: int) -> NetworkSpec:
    alpha = float(alpha_text)
    file_alpha = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
    weights_file = f"mobilenet_{file_alpha}_{size}_tf_no_top.h5"
    return NetworkSpec(
        name=f"mobilenet_{alpha_text}_{size}",
        family="mobilenet",
        alpha=alpha,
        input_size=size,
        bottleneck_size=int(1024 * alpha),
        weights_file=weights_file,
        weights_url=KERAS_BASE_URL + "mobilenet/" + weights_file,
        split_layer="conv_pw_11_relu",
    )


def _mobilenet_v2(alpha_text: str, size: int) -> NetworkSpec:
    alpha = float(alpha_text)
    weights_file = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{size}_no_top.h5"
    return NetworkSpec(
        name=f"mobilenet_v2_{alpha_text}_{size}",
        family="mobilenet_v2",
        alpha=alpha,
        input_size=size,
        bottleneck_size=int(1280 * alpha) if alpha > 1.0 else 1280,
        weights_file=weights_file,
        weights_url=KERAS_BASE_URL + "mobilenet_v2/" + weights_file,
    )


def _build_registry() -> dict[str, NetworkSpec]:
    inception_file = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
    specs = [
        NetworkSpec(
            name="inception_v3",
            family="inception_v3",
            alpha=1.0,
            input_size=299,
            bottleneck_size=2048,
            weights_file=inception_file,
            weights_url=KERAS_BASE_URL + "inception_v3/" + inception_file,
            split_layer="mixed8",
            litert_photo_stage=False,
        )
    ]
    for alpha_text in ("1.0", "0.75", "0.50", "0.25"):
        specs += [_mobilenet_v1(alpha_text, size) for size in (224, 192, 160, 128)]
    for alpha_text in ("1.4", "1.3", "1.0", "0.75", "0.50", "0.35"):
        specs += [_mobilenet_v2(alpha_text, size) for size in (224, 192, 160, 128, 96)]
    # MobileNetV2 1.0 at a 288 input, with its 224 weights (a convolutional network takes any
    # size): +0.8 points of cross-validated accuracy for 1.65x the compute, which an int8
    # model.tflite more than pays for (bench/results-issue31.txt).
    specs.append(dataclasses.replace(_mobilenet_v2("1.0", 224), name="mobilenet_v2_1.0_288",
                                     input_size=288))
    registry = {spec.name: spec for spec in specs}
    registry["mobilenet_v2"] = registry["mobilenet_v2_1.0_224"]
    return registry


NETWORKS: dict[str, NetworkSpec] = _build_registry()
DEFAULT_ARCHITECTURE = "mobilenet_v2"


def split_points(spec: NetworkSpec) -> tuple[str, ...]:
    """The layers between blocks where the fine-tune recipe can cut `spec`'s network, as Keras
    names them (tests/test_finetune.py checks them against every family's built network)."""
    if spec.family == "mobilenet_v2":
        return tuple(f"block_{n}_add" for n in (2, 4, 5, 7, 8, 9, 11, 12, 14, 15))
    if spec.family == "mobilenet":
        return tuple(f"conv_pw_{n}_relu" for n in range(1, 14))
    return tuple(f"mixed{n}" for n in range(11))


def check_split_layer(spec: NetworkSpec, layer: str) -> str:
    """`layer` if `spec`'s network can be cut there, else `UsageError` listing where it can."""
    if layer not in split_points(spec):
        raise UsageError(f"{spec.name} has no layer {layer!r} to split at; split points "
                         f"between blocks: {', '.join(split_points(spec))}")
    return layer


def get_spec(name: str) -> NetworkSpec:
    """The spec registered under `name`, or `UnknownArchitectureError` listing the valid names."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; choose one of: {', '.join(NETWORKS)} "
            "(`flowers architectures` lists them)"
        ) from None


# The weights files Keras' load_weights reads, by how their names end (as Keras compares them,
# case and all), and whether their first bytes are right. HDF5 may start after a user block of
# 512 bytes times a power of two.
def _is_hdf5(start: bytes) -> bool:
    return any(start[at:at + 8] == b"\x89HDF\r\n\x1a\n" for at in (0, 512, 1024, 2048, 4096))


_WEIGHTS_FILES: dict[str, Callable[[bytes], bool]] = {
    ".keras": lambda start: start.startswith(b"PK\x03\x04"),
    ".weights.json": lambda start: start.lstrip().startswith(b"{"),
    ".h5": _is_hdf5,
    ".hdf5": _is_hdf5,
}


def check_weights_option(weights: str) -> str:
    """`--weights` as given (imagenet, none) or as an absolute path to a file Keras can read
    weights from, checked by its name and first bytes before any work; else `UsageError`."""
    if weights in (WEIGHTS_IMAGENET, "none"):
        return weights
    path = Path(weights)
    if not path.is_file():
        raise UsageError(f"--weights {weights}: no such file; use imagenet, none or a weights "
                         "file")
    looks_right = next((check for ending, check in _WEIGHTS_FILES.items()
                        if path.name.endswith(ending)), None)
    try:
        with open(path, "rb") as handle:
            start = handle.read(4104)
    except OSError as exc:
        raise UsageError(f"--weights {weights}: cannot read it ({exc.strerror or exc})") from None
    if looks_right is None or not looks_right(start):
        raise UsageError(
            f"--weights {weights}: not a Keras weights file (an HDF5 .h5 file as Keras saves a "
            "network's weights, a .weights.json or a .keras file); use imagenet, none or such "
            "a file")
    return str(path.resolve())


def resolve_weights(spec: NetworkSpec, weights: str | None, weights_dir: Path | None) -> str | None:
    """What to pass as Keras' `weights=`: None, a local file, or "imagenet" (download/cache).

    A file named `spec.weights_file` in `weights_dir` wins; otherwise Keras' own cache or download.
    """
    if weights is None or weights == "none":
        return None
    if weights != WEIGHTS_IMAGENET:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailableError(f"weights file {path} does not exist")
        return str(path)
    if weights_dir is not None:
        candidate = Path(weights_dir) / spec.weights_file
        if candidate.is_file():
            return str(candidate)
    return WEIGHTS_IMAGENET


def _application(spec: NetworkSpec) -> Any:
    import keras

    return {
        "inception_v3": keras.applications.InceptionV3,
        "mobilenet": keras.applications.MobileNet,
        "mobilenet_v2": keras.applications.MobileNetV2,
    }[spec.family]


def build_application(
    spec: NetworkSpec, weights: str | None = WEIGHTS_IMAGENET, weights_dir: Path | None = None
) -> keras.Model:
    """The Keras application without its top: [-1, 1] pixels in, pooled features out."""
    import keras

    resolved = resolve_weights(spec, weights, weights_dir)
    if resolved is None:  # random weights, but the same ones on every build: cached features
        keras.utils.set_random_seed(0)  # of one build are those of the next
    shape = (spec.input_size, spec.input_size, 3)
    kwargs: dict[str, Any] = {"include_top": False, "pooling": "avg", "input_shape": shape}
    if spec.family != "inception_v3":
        kwargs["alpha"] = spec.alpha
    try:
        application = _application(spec)(weights=resolved, **kwargs)
    except Exception as exc:
        if resolved != WEIGHTS_IMAGENET:
            raise
        where = f"FLOWERS_WEIGHTS_DIR ({weights_dir})" if weights_dir else "FLOWERS_WEIGHTS_DIR"
        raise WeightsUnavailableError(
            f"weights {spec.weights_file} for {spec.name} are not in {where} and could not be "
            f"downloaded ({type(exc).__name__}: {exc}); fetch {spec.weights_url} and put it in "
            "FLOWERS_WEIGHTS_DIR, or pass --weights none for random weights"
        ) from None
    log.info("built %s (%s, weights=%s)", spec.name, spec.describe(), resolved)
    return application


def scaling_layer(spec: NetworkSpec) -> keras.layers.Layer:
    """The layer that maps 0-255 pixels to the network's value range."""
    import keras

    return keras.layers.Rescaling(spec.scale, offset=spec.offset, name="scale_to_unit")


def build_base_network(
    name: str, weights: str | None = WEIGHTS_IMAGENET, weights_dir: Path | None = None
) -> keras.Model:
    """A Keras model from 0-255 RGB pixels (N, size, size, 3) to bottlenecks (N, features)."""
    import keras

    spec = get_spec(name)
    base = build_application(spec, weights, weights_dir)
    pixels = keras.Input(shape=(spec.input_size, spec.input_size, 3), name="pixels")
    bottleneck = base(scaling_layer(spec)(pixels))
    return keras.Model(pixels, bottleneck, name=f"{spec.name.replace('.', '_')}_base")


def batch_runner(model: keras.Model) -> Callable[[np.ndarray], Any]:
    """Wraps `model` in one graph traced once for uint8 batches of any length; its output as
    an array (a dict of them for a model with named outputs, such as a bundle's)."""
    import tensorflow as tf

    size = model.input_shape[1]

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8)])
    def run(batch: tf.Tensor) -> Any:
        return model(tf.cast(batch, tf.float32), training=False)

    def numpy(batch: np.ndarray) -> Any:
        outputs = run(batch)
        if isinstance(outputs, dict):
            return {name: value.numpy() for name, value in outputs.items()}
        return outputs.numpy()

    return numpy


def library_versions() -> dict[str, str]:
    """Python, TensorFlow, Keras and flowers versions, as manifests record them."""
    from importlib import metadata

    import keras
    import tensorflow as tf

    versions = {"python": platform.python_version(), "tensorflow": tf.__version__,
                "keras": keras.__version__}
    try:
        versions["flowers"] = metadata.version("flowers")
    except metadata.PackageNotFoundError:
        versions["flowers"] = "unknown"
    return versions
