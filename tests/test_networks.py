"""The network registry, weight resolution, and built networks' shapes and outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flowers.models.errors import UnknownArchitectureError, WeightsUnavailableError
from flowers.models.networks import (
    NETWORKS,
    batch_runner,
    build_base_network,
    get_spec,
    resolve_weights,
)
from tests.conftest import SMALL_NETWORK


def test_registry_names_and_sizes() -> None:
    assert get_spec("mobilenet_v2") is get_spec("mobilenet_v2_1.0_224")
    assert get_spec("inception_v3").input_size == 299
    assert get_spec("inception_v3").bottleneck_size == 2048
    assert get_spec("mobilenet_0.50_160").bottleneck_size == 512
    assert get_spec("mobilenet_v2_1.4_224").bottleneck_size == 1792
    assert get_spec("mobilenet_0.25_224").weights_file == "mobilenet_2_5_224_tf_no_top.h5"
    assert (get_spec("mobilenet_v2").weights_file
            == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
    assert get_spec("mobilenet_v2_1.0_288").input_size == 288
    assert get_spec("mobilenet_v2_1.0_288").weights_file == get_spec("mobilenet_v2").weights_file
    assert len(NETWORKS) == 1 + 16 + 30 + 1 + 1


def test_unknown_architecture_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownArchitectureError, match="choose one of: inception_v3, mobilenet_1"):
        get_spec("resnet50")


def test_weights_file_in_weights_dir_wins(weights_dir: Path, tmp_path: Path) -> None:
    spec = get_spec(SMALL_NETWORK)
    assert resolve_weights(spec, "imagenet", weights_dir) == str(weights_dir / spec.weights_file)
    assert resolve_weights(spec, "imagenet", tmp_path) == "imagenet"
    assert resolve_weights(spec, "none", weights_dir) is None


def test_missing_weights_offline_name_the_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    def offline(*args: object, **kwargs: object) -> str:
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.src.applications.mobilenet.file_utils, "get_file", offline)
    with pytest.raises(WeightsUnavailableError) as caught:
        build_base_network(SMALL_NETWORK, "imagenet", tmp_path)
    message = str(caught.value)
    assert "mobilenet_2_5_224_tf_no_top.h5" in message and "FLOWERS_WEIGHTS_DIR" in message


@pytest.mark.parametrize(("name", "features"), [("mobilenet_0.25_128", 256),
                                                ("mobilenet_v2_0.35_96", 1280),
                                                ("inception_v3", 2048)])
def test_random_networks_have_the_registered_shapes(name: str, features: int) -> None:
    model = build_base_network(name, weights=None)
    size = get_spec(name).input_size
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, features)


def test_real_weights_load_and_scaling_is_inside_the_model(weights_dir: Path) -> None:
    model = build_base_network(SMALL_NETWORK, "imagenet", weights_dir)
    random = build_base_network(SMALL_NETWORK, None)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    run = batch_runner(model)
    features = run(pixels)
    assert features.shape == (3, 256)
    np.testing.assert_allclose(features, model(pixels.astype("float32")).numpy(), atol=1e-5)
    assert not np.allclose(features, batch_runner(random)(pixels), atol=1e-3)
    np.testing.assert_allclose(run(pixels[:1]), features[:1], atol=1e-5)


def test_weights_files_are_checked_by_name_and_first_bytes(tmp_path: Path) -> None:
    """What Keras' load_weights reads, as it tells them apart: the name's ending, case and all."""
    from flowers.models.errors import UsageError
    from flowers.models.networks import check_weights_option

    hdf5 = b"\x89HDF\r\n\x1a\n" + bytes(100)
    accepted = {"w.h5": hdf5, "w.hdf5": hdf5, "w.weights.h5": hdf5,
                "blocked.h5": bytes(512) + hdf5, "w.keras": b"PK\x03\x04" + bytes(10),
                "w.weights.json": b' {"weights": []}'}
    refused = {"W.H5": hdf5, "w.txt": hdf5, "text.h5": b"not weights", "w.json": b"{}"}
    for name, data in {**accepted, **refused}.items():
        (tmp_path / name).write_bytes(data)
    for name in accepted:
        assert check_weights_option(str(tmp_path / name)) == str(tmp_path / name)
    for name in refused:
        with pytest.raises(UsageError, match="not a Keras weights file"):
            check_weights_option(str(tmp_path / name))
    assert check_weights_option("none") == "none"
