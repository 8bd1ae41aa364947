"""A bundle's manifest.json checked, field by field, before anything uses it: the types of the
fields labelling reads, labels.txt against its class names, and an opened model's input and
outputs against it. Each refusal is one `BundleError` naming the bundle, the field, what was
found and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowers.models.atomic import read_regular_file
from flowers.models.dataset import class_name_problem
from flowers.models.errors import BundleError

LABELS_FILE = "labels.txt"
MANIFEST_FILE = "manifest.json"


def _refuse(bundle: Path, field: str, found: Any, wanted: str) -> BundleError:
    shown = json.dumps(found, ensure_ascii=False)
    shown = shown if len(shown) <= 80 else f"{shown[:76]} ..."
    return BundleError(f"bundle {bundle}: {MANIFEST_FILE}'s {field} is {shown}, not {wanted}: "
                       "retrain or re-export the bundle")


def _one_line_name(name: Any) -> bool:
    """A non-empty class name that labels.txt keeps: the rule of the scan that made it
    (`dataset.class_name_problem`), so a bundle trained on a folder is never refused here."""
    return isinstance(name, str) and bool(name.strip()) and class_name_problem(name) is None


def check_manifest(bundle: Path, manifest: dict[str, Any]) -> None:
    """Raises `BundleError` unless the fields whoever labels reads have the types flowers writes:
    input_size [N, N]; class_names two or more distinct names, each one printable line;
    architecture and bundle_id non-empty strings; preprocessing, models, imported, not_included,
    metrics, calibration, decisions, training_arguments and recipe, where present, objects
    (`decisions` is read whole by `models.runtime.decisions.load_decider`); models.keras a file
    name inside the bundle."""
    for key in ("architecture", "bundle_id"):
        if not isinstance(manifest[key], str) or not manifest[key].strip():
            raise _refuse(bundle, key, manifest[key], "a non-empty string")
    size = manifest["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and size[0] == size[1]
            and type(size[0]) is int and type(size[1]) is int and size[0] > 0):
        raise _refuse(bundle, "input_size", size, "[N, N] with N a positive whole number of pixels")
    names = manifest["class_names"]
    if not isinstance(names, list) or len(names) < 2:
        raise _refuse(bundle, "class_names", names, "a list of two or more class names")
    for name in names:
        if not _one_line_name(name):
            raise _refuse(bundle, "class name", name,
                          "a non-empty name that labels.txt keeps on one line")
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise _refuse(bundle, "class_names", names, f"distinct names ({twice[0]!r} is repeated)")
    for key in ("preprocessing", "models", "imported", "not_included", "metrics", "calibration",
                "decisions", "training_arguments", "recipe"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise _refuse(bundle, key, manifest[key], "an object")
    preprocessing = manifest.get("preprocessing") or {}
    for key in ("resize_method", "version"):
        if preprocessing.get(key) is not None and not isinstance(preprocessing[key], str):
            raise _refuse(bundle, f"preprocessing.{key}", preprocessing[key], "a string")
    keras_name = (manifest.get("models") or {}).get("keras")
    if keras_name is not None and (not isinstance(keras_name, str) or
                                   Path(keras_name).name != keras_name or keras_name in ("", "..")):
        raise _refuse(bundle, "models.keras", keras_name, "a file name in the bundle")
    resize_method(manifest)


def check_labels_file(bundle: Path, manifest: dict[str, Any]) -> None:
    """Raises `BundleError` unless labels.txt lists the manifest's class_names, one a line
    (trailing blank lines aside), whatever runtime is to run the bundle."""
    path = bundle / LABELS_FILE
    try:
        labels = read_regular_file(path).decode("utf-8").splitlines()
    except FileNotFoundError:
        raise BundleError(f"bundle {bundle} lacks {LABELS_FILE}: retrain or re-export the "
                          "bundle") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path} is unreadable ({exc}): retrain or re-export the "
                          "bundle") from None
    while labels and not labels[-1].strip():
        labels.pop()
    names = list(manifest["class_names"])
    if labels != names:
        shown = lambda items: json.dumps(items, ensure_ascii=False)[:120]  # noqa: E731
        raise BundleError(
            f"bundle {bundle}: {path.name} ({len(labels)} labels, {shown(labels)}) does not "
            f"match {MANIFEST_FILE}'s class_names ({len(names)}, {shown(names)}): retrain or "
            f"re-export the bundle, or write {LABELS_FILE} from class_names, one a line")


def check_model_shapes(bundle: Path, manifest: dict[str, Any], model_file: str,
                       input_shape: tuple[int | None, ...],
                       output_shape: tuple[int | None, ...],
                       features_shape: tuple[int | None, ...] | None = None) -> None:
    """Raises `BundleError` unless the opened model takes the manifest's input_size (N, N, 3
    pixels, any batch), gives one score per name of its class_names, and (when the manifest's
    decisions tell unknown photos by their features) features of the size they say."""
    size = int(manifest["input_size"][0])
    if tuple(input_shape[1:]) != (size, size, 3):
        raise BundleError(
            f"bundle {bundle}: {model_file} takes photos of {list(input_shape[1:])} but "
            f"{MANIFEST_FILE}'s input_size is [{size}, {size}]: retrain or re-export the bundle")
    classes = len(manifest["class_names"])
    if len(output_shape) != 2 or output_shape[-1] != classes:
        scores = output_shape[-1] if len(output_shape) == 2 else list(output_shape[1:])
        raise BundleError(
            f"bundle {bundle}: {model_file} gives {scores} scores per photo but "
            f"{MANIFEST_FILE}'s class_names has {classes} names: retrain or re-export the bundle")
    unknown = (manifest.get("decisions") or {}).get("unknown")
    if unknown is not None:
        wanted = unknown.get("feature_size") if isinstance(unknown, dict) else unknown
        if features_shape is None or tuple(features_shape[1:]) != (wanted,):
            given = "no features" if features_shape is None else (
                f"features of {list(features_shape[1:])}")
            raise BundleError(
                f"bundle {bundle}: {model_file} gives {given} but {MANIFEST_FILE}'s decisions "
                f"measure unknown photos by features of [{wanted}]: retrain the bundle")


def resize_method(manifest: dict[str, Any]) -> str:
    """How labelling resizes photos for this bundle (`models.decode.RESIZES`): what the
    manifest's preprocessing names, else flowers' own (bundles made by flowers train)."""
    from flowers.models.decode import RESIZE_FLOWERS, RESIZES

    method = (manifest.get("preprocessing") or {}).get("resize_method", RESIZE_FLOWERS)
    if method not in RESIZES:
        raise BundleError(f"the manifest's resize_method {method!r} is none this flowers knows "
                          f"({', '.join(RESIZES)}): upgrade flowers")
    return str(method)
