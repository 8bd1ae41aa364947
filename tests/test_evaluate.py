"""`flowers evaluate`: stratified folds, through a real local cluster, printed and as JSON;
and `flowers cache` over the caches it filled."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from flowers.models.dataset import Photo
from flowers.models.errors import UsageError
from flowers.models.training.folds import stratified_folds
from tests.conftest import SMALL_NETWORK, copy_subset, flowers_env, run_flowers


def test_folds_are_stratified_disjoint_and_cover_every_photo() -> None:
    photos = [Photo(Path(f"/p/c{label}/{i}.jpg"), label) for label in range(3)
              for i in range(10 + label)]
    fold_of = stratified_folds(photos, 4)
    assert len(fold_of) == len(photos) and set(fold_of) == {0, 1, 2, 3}
    for label in range(3):
        counts = Counter(f for f, p in zip(fold_of, photos, strict=True) if p.label == label)
        assert max(counts.values()) - min(counts.values()) <= 1
    moved = [Photo(Path("/elsewhere") / p.path.name, p.label) for p in reversed(photos)]
    assert stratified_folds(moved, 4) == list(reversed(fold_of))
    with pytest.raises(UsageError, match="more than the 10 photos"):
        stratified_folds(photos, 11)


def test_figures_replace_only_figures_flowers_evaluate_wrote(tmp_path: Path) -> None:
    from flowers.cli.evaluate import check_output

    photos = tmp_path / "photos"
    photos.mkdir()
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"format": "flowers-evaluation/1", "job_id": "a" * 32}))
    assert check_output(ours, photos) == ours
    assert check_output(tmp_path / "new.json", photos) == tmp_path / "new.json"
    before = tmp_path / "before.json"  # written before the format was recorded
    before.write_text(json.dumps(dict.fromkeys(
        ("photo_dir", "architecture", "folds", "recipes", "fold_of", "request"), 1)))
    assert check_output(before, photos) == before
    for content in ('{"format": "flowers-evaluation/1"}', '{"job_id": "' + "a" * 32 + '"}',
                    "[1, 2]", "not json"):
        theirs = tmp_path / "theirs.json"
        theirs.write_text(content)
        with pytest.raises(UsageError, match="is not figures flowers evaluate wrote"):
            check_output(theirs, photos)
    with pytest.raises(UsageError, match="inside the photo folder"):
        check_output(photos / "figures.json", photos)


@pytest.mark.queue
def test_evaluate_three_folds_then_the_cache(
    flower_photos: Path, out_of_set: Path, flowers_home: Path, weights_dir: Path, tmp_path: Path
) -> None:
    photos = copy_subset(flower_photos, tmp_path / "photos", ["daisy", "roses", "tulips"], 12)
    stray = tmp_path / "stray"
    stray.mkdir()
    for photo in sorted(out_of_set.glob("*.jpg"))[:3]:
        shutil.copy(photo, stray / photo.name)
    env = flowers_env(flowers_home, None, weights_dir)
    output = tmp_path / "figures.json"
    result = run_flowers("evaluate", str(photos), "--folds", "3", "--architecture",
                         SMALL_NETWORK, "--views", "2", "--epochs", "1", "--cross-fit", "2",
                         "--how-many-training-steps", "50", "--stray", str(stray),
                         "--output", str(output), env=env)
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    assert figures["format"] == "flowers-evaluation/1" and len(figures["job_id"]) == 32
    assert figures["folds"] == 3 and set(figures["recipes"]) == {"fine-tune", "codelab"}
    fold_of = figures["fold_of"]
    assert len(fold_of) == 36 and sorted(fold_of) == sorted(
        p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg"))
    by_class = Counter((name.split("/")[0], fold) for name, fold in fold_of.items())
    assert set(by_class.values()) == {4}, "each fold holds 4 photos of each class"
    for name, recipe in figures["recipes"].items():
        line = re.search(rf"^{name} +(\d\.\d+) \+- (\d\.\d+) +(.*)$", result.stdout, re.M)
        assert line, result.stdout
        assert float(line[1]) == pytest.approx(recipe["mean_accuracy"], abs=5e-4)
        assert float(line[2]) == pytest.approx(recipe["std_accuracy"], abs=5e-4)
        recalls = [float(value) for value in line[3].split()]
        assert recalls == pytest.approx(
            [recipe["per_class_recall"][c] for c in ("daisy", "roses", "tulips")], abs=5e-4)
        trust = recipe["calibration"]
        assert 0 <= trust["ece_after"] <= 1 and 0 <= trust["ece_before"] <= 1
        assert all(d["temperature"] > 0 for d in recipe["fold_details"])
        assert f"{name} confidences: ECE {trust['ece_before']:.3f} -> {trust['ece_after']:.3f}" \
            in result.stdout, result.stdout
        assert f"{name} fold ECE: " + ", ".join(
            f"{d['ece_before']:.3f} -> {d['ece_after']:.3f}" for d in recipe["fold_details"]) \
            in result.stdout, result.stdout
        assert [d["test"] for d in recipe["fold_details"]] == [12, 12, 12]
        if name == "codelab":  # trust from the held-out splits of the fold's training photos
            assert all(d["train"] + d["held_out"] == 24 and d["held_out"] >= d["validation"]
                       for d in recipe["fold_details"])
        else:  # --cross-fit 2: trust from all 24, each scored by a model fitted on the other 12
            assert all(d["held_out"] == d["refit_photos"] == 24
                       and sorted(d["cross_fit_parts"]["photos"]) == [12, 12]
                       for d in recipe["fold_details"])
        assert trust["stray_photos"] == 3 and len(trust["stray_unknown"]) == 3
        assert all(0 <= n <= 3 for n in trust["stray_unknown"])
        assert f"of 3 stray photos (per fold {' '.join(map(str, trust['stray_unknown']))})" \
            in result.stdout, result.stdout
        assert 0 <= trust["unknown_rate"] <= 1
    # The cluster's photo stage computed the flower photos' views; the evaluation itself adds
    # the stray photos' (cached alike, never trained on).
    assert figures["recipes"]["fine-tune"]["cache"] == {"cache_hits": 0, "computed": 72}

    shown = run_flowers("cache", env=env)
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"^bottlenecks +{re.escape(SMALL_NETWORK)} +39 ", shown.stdout, re.M)
    assert re.search(rf"^activations +{re.escape(SMALL_NETWORK)} +39 ", shown.stdout, re.M), \
        "an entry a photo (36 flowers, 3 stray), its 2 views in it"
    # 39 photos are too few network passes to be worth converting for LiteRT.
    assert not re.search(r"^litert ", shown.stdout, re.M)
    cleared = run_flowers("cache", "--clear", "--kind", "activations", env=env)
    assert cleared.returncode == 0 and "cleared" in cleared.stdout
    after = run_flowers("cache", env=env).stdout
    assert "activations" not in after and re.search(r"^bottlenecks .* 39 ", after, re.M)


def test_evaluate_scores_each_fold_on_its_int8_model(
    flower_photos: Path, weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--quantize int8` cross-validates what `flowers train --quantize int8` would make: each
    fold's accuracy is that of its own int8 model on the fold's photos (what that model says of
    a photo is checked against a trained bundle's model.tflite in tests/test_finetune.py)."""
    import numpy as np

    from flowers.models.training import quantized
    from flowers.models.training.evaluate import EvaluateRequest, evaluate
    from flowers.models.training.recipe import FineTuneRecipe
    from flowers.models.training.retrain import RetrainRequest

    made: list[quantized.QuantizedScores] = []

    class Kept(quantized.QuantizedScores):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(quantized, "QuantizedScores", Kept)
    photos = copy_subset(flower_photos, tmp_path / "photos", ["daisy", "roses"], 10)
    training = RetrainRequest(photo_dir=str(photos), architecture=SMALL_NETWORK,
                              fine_tune=FineTuneRecipe(views=2, epochs=1), quantize="int8")
    result = evaluate(EvaluateRequest(training, folds=2, recipes=("fine-tune",)),
                      tmp_path / "home", weights_dir)
    figures = result["recipes"]["fine-tune"]
    assert figures["quantize"] == "int8" and len(made) == 2, "one int8 model a fold"
    for fold, scores in enumerate(made):
        names = [path.relative_to(photos).as_posix() for path in scores.paths]
        rows = [row for row, name in enumerate(names) if result["fold_of"][name] == fold]
        truth = [result["classes"].index(names[row].split("/")[0]) for row in rows]
        right = scores.probabilities(rows).argmax(axis=1) == np.array(truth)
        assert figures["fold_details"][fold]["accuracy"] == pytest.approx(right.mean())


def test_evaluate_refits_each_fold_on_all_its_training_photos(
    flower_photos: Path, weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--refit`: each fold's trust figures are fitted on the first model's held-out scores,
    then the model is fitted again on all the fold's training photos (the held-out ones too)
    and the test fold is scored on that model, as `flowers train --refit` ships it."""
    import numpy as np

    from flowers.models.training import calibration, trainer, trust
    from flowers.models.training.evaluate import EvaluateRequest, evaluate
    from flowers.models.training.recipe import FineTuneRecipe
    from flowers.models.training.retrain import RetrainRequest

    events: list[str] = []
    test_scores: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    real_refit, real_fit_trust = trainer.refit, trust.fit_trust

    def refit(fitted: trainer.Fitted, labels: np.ndarray, rows: dict[str, list[int]],
              *args: object, **kwargs: object) -> trainer.Fitted | None:
        every = rows["training"] + rows["validation"] + rows["testing"]
        others = sorted(set(range(len(labels))) - set(every))
        before = fitted.probabilities(others)
        again = real_refit(fitted, labels, rows, *args, **kwargs)  # type: ignore[arg-type]
        assert again is not None
        events.append("refit")
        test_scores.append((len(every), labels[others], before, again.probabilities(others)))
        return again

    def fit_trust(*args: object, **kwargs: object) -> trust.Trust:
        events.append("trust")
        return real_fit_trust(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer, "refit", refit)
    monkeypatch.setattr(trust, "fit_trust", fit_trust)
    photos = copy_subset(flower_photos, tmp_path / "photos", ["daisy", "roses"], 10)
    training = RetrainRequest(photo_dir=str(photos), architecture=SMALL_NETWORK,
                              fine_tune=FineTuneRecipe(views=2, epochs=1, refit=True),
                              validation_percentage=20, testing_percentage=20)
    result = evaluate(EvaluateRequest(training, folds=2, recipes=("fine-tune",)),
                      tmp_path / "home", weights_dir)
    figures = result["recipes"]["fine-tune"]
    assert figures["settings"]["refit"] is True
    assert events == ["trust", "refit"] * 2, "each fold's trust comes from its first model"
    for details, (photos_used, truth, before, after) in zip(
            figures["fold_details"], test_scores, strict=True):
        assert details["refit_photos"] == photos_used == details["train"] + details["held_out"]
        assert details["held_out"] > 0
        assert not np.allclose(before, after, atol=1e-4), "the refit changed nothing"
        assert details["ece_before"] == pytest.approx(
            calibration.expected_calibration_error(after, truth))
        assert details["accuracy"] == pytest.approx(np.mean(after.argmax(axis=1) == truth))


def test_an_unknown_quantization_is_a_usage_error(flowers_home: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for name in ("a", "b"):
        (photos / name).mkdir(parents=True)
    for command in ("evaluate", "train"):
        refused = run_flowers(command, str(photos), "--quantize", "int4",
                              env=flowers_env(flowers_home, None, None))
        assert refused.returncode == 2 and "'int4' is not one of 'float16', 'int8'" in \
            refused.stderr, refused.stderr
