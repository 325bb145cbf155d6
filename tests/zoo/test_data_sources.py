"""Evaluation data the users already have: the authors' data location, Hugging Face datasets (hub
cache and save_to_disk), detection, the authors' validation rule and the quick mode's sample.

Replicas are written as the real files are (``tests/zoo/data_replicas.py``). On each: image counts
per split, validation items equal to the authors' rule computed here independently (torch's own
``random_split``), the authors' class order, and predictions equal to a direct forward pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from open_clip.transform import image_transform
from torch.utils.data import random_split

from merging.errors import IsoscopeError
from merging.io import save_safetensors
from tests.zoo.data_replicas import AUTHORS, Expected, write_authors_location, write_hub_dataset, write_saved_dataset
from tests.zoo.test_folders import OUT, finetune, tower
from zoo.authors_data import AuthorsData
from zoo.data import ImageFolderData, Preprocess, authors_val_indices, stratified_sample
from zoo.data_sources import open_data
from zoo.folders import open_files
from zoo.hf_datasets import HFData
from zoo.text_heads import templates_for

PREP = Preprocess(32)
OWN_VAL = {"EuroSAT"}  # the only dataset the authors validate on a split of its own


def rule_indices(train_size: int) -> list[int]:
    """The authors' ``split_train_into_train_val``, written with torch's ``random_split``."""
    val = min(int(train_size * 0.1), 5000)
    _, held_out = random_split(range(train_size), [train_size - val, val], generator=torch.Generator().manual_seed(0))
    return list(held_out.indices)


def expected_split(expected: Expected, split: str, rule: bool) -> tuple[list, list[int]]:
    """(images, labels) a reader must give for ``split``: its own, or the rule's part of train."""
    if not rule:
        return expected.images[split], expected.labels[split]
    picked = rule_indices(len(expected.labels["train"]))
    return [expected.images["train"][i] for i in picked], [expected.labels["train"][i] for i in picked]


def crops(images: list) -> torch.Tensor:
    return torch.stack([PREP.crop(image) for image in images])  # (N, 3, 32, 32) uint8


@pytest.fixture(scope="module")
def authors(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Expected]]:
    root = tmp_path_factory.mktemp("location")
    return root, write_authors_location(root)


@pytest.fixture(scope="module")
def hf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Expected]]:
    """A hub cache with a card-only ClassLabel (no validation split: the rule applies) and a
    save_to_disk DatasetDict with a validation split of its own."""
    root = tmp_path_factory.mktemp("hf")
    cars = write_hub_dataset(root / "hub", "tanganke", "stanford_cars", ("volvo", "audi", "fiat"),
                             {"train": [0, 1, 2, 2, 1, 0] * 4, "test": [2, 0, 1, 1, 0, 2, 2]}, seed=1)
    sun = write_saved_dataset(root, "sun397", ("abbey", "badlands"),
                              {"train": [0, 1] * 6, "validation": [1, 0, 1, 1], "test": [0, 1, 1, 0, 0]}, seed=2)
    return root, {"Cars": cars, "SUN397": sun}


@pytest.mark.parametrize("task", list(AUTHORS))
def test_authors_location_counts_classes_and_validation(authors: tuple, task: str) -> None:
    root, expected = authors
    data = open_data(root)
    assert isinstance(data, AuthorsData) and data.splits(task) == ["test", "val"]
    want = expected[task]
    assert data.classes(task) == want.classes and data.head_classes(task) == list(want.classes)
    for split in ("test", "val"):
        images, labels = expected_split(want, split, rule=split == "val" and task not in OWN_VAL)
        loaded = data.load(task, split, PREP)
        assert data.size(task, split) == len(labels) > 0
        assert loaded.labels.tolist() == labels
        assert torch.equal(loaded.images, crops(images))  # the very items, in the rule's order


def test_task_names_match_loosely(authors: tuple) -> None:
    data = open_data(authors[0])
    for name in ("MNISTVal", "mnist", "stanford_cars", "Stanford-Cars", "CarsVal", "eurosat"):
        assert data.splits(name) == ["test", "val"], name
    assert data.splits("CIFAR10") == [] and data.missing(["MNIST", "CIFAR10"], "test") == ["CIFAR10"]


def test_the_rule_is_the_authors_split() -> None:
    # MNIST's closed case: the authors assert that the first train index after the split is 36044
    perm = torch.randperm(60000, generator=torch.Generator().manual_seed(0))
    assert int(perm[0]) == 36044
    val = authors_val_indices(60000)
    assert val.tolist() == rule_indices(60000) and len(val) == 5000 and 36044 not in set(val.tolist())
    for size in (11, 40, 1234, 49999, 50001):  # ⌊0.1·N⌋ below and above the 5000 cap
        assert authors_val_indices(size).tolist() == rule_indices(size)
    with pytest.raises(IsoscopeError, match="too small"):
        authors_val_indices(9)


def test_hugging_face_datasets(hf: tuple) -> None:
    root, expected = hf
    for where in (root, root / "hub"):  # HF_HOME-like or the hub folder itself
        assert isinstance(open_data(where), HFData)
    data = open_data(root)
    assert data.splits("Cars") == data.splits("SUN397") == ["test", "val"] and data.splits("MNIST") == []
    assert "cars" not in data._loaded and "sun397" not in data._loaded  # split names come from the files alone
    assert data.classes("Cars") == ("volvo", "audi", "fiat")  # the card's ClassLabel order, not sorted
    assert data.classes("sun397") == ("abbey", "badlands")
    for task, own_val in (("Cars", False), ("SUN397", True)):
        want = expected[task]
        for split in ("test", "val"):
            images, labels = expected_split(want, "validation" if split == "val" and own_val else split,
                                            rule=split == "val" and not own_val)
            loaded = data.load(task, split, PREP)
            assert data.size(task, split) == len(labels) and loaded.labels.tolist() == labels
            assert torch.equal(loaded.images, crops(images))


def test_image_folder_stays_the_default(tmp_path: Path) -> None:
    (tmp_path / "MNIST" / "test" / "a").mkdir(parents=True)
    assert isinstance(open_data(tmp_path), ImageFolderData)
    with pytest.raises(IsoscopeError, match="does not exist"):
        open_data(tmp_path / "nowhere")


# --- the zoo over these sources ----------------------------------------------------------------

def zoo_over(tmp_path: Path, tasks: dict[str, int], data: Path, **options: object) -> tuple:
    """The zoo of ``write_folder(tmp_path, tasks)`` over ``data``, with its models and heads."""
    models, heads = write_folder(tmp_path, tasks)
    zoo = open_files(tmp_path / "pretrained.safetensors", {t: tmp_path / f"{t}.safetensors" for t in tasks},
                     heads={t: tmp_path / f"head_{t}.safetensors" for t in tasks}, data=data, **options)
    return zoo, models, heads


def write_folder(tmp_path: Path, tasks: dict[str, int]) -> tuple[dict, dict]:
    """A plain checkpoint folder whose tasks are ``tasks`` (name -> class count), random heads."""
    base = tower(0)
    models = {t: finetune(base, i + 1) for i, t in enumerate(tasks)}
    save_safetensors(base.state_dict(), tmp_path / "pretrained.safetensors")
    heads = {}
    for i, (task, count) in enumerate(tasks.items()):
        gen = torch.Generator().manual_seed(100 + i)
        heads[task] = {"weight": torch.randn(count, OUT, generator=gen), "bias": torch.randn(count, generator=gen)}
        save_safetensors({f"visual.{k}": v for k, v in models[task].state_dict().items()}, tmp_path / f"{task}.safetensors")
        save_safetensors(heads[task], tmp_path / f"head_{task}.safetensors")
    return {"": base, **models}, heads


def direct(model: torch.nn.Module, head: dict[str, torch.Tensor], images: list) -> torch.Tensor:
    """Predictions (N,) from open_clip's own eval transform, the raw tower and W·f̂ + b."""
    batch = torch.stack([image_transform(32, is_train=False)(image) for image in images])
    with torch.no_grad():
        features = torch.nn.functional.normalize(model(batch), dim=-1)
    return (features @ head["weight"].T + head["bias"]).argmax(-1)


def test_predictions_equal_a_direct_forward_pass(authors: tuple, hf: tuple, tmp_path: Path) -> None:
    for source, (root, expected) in (("authors", authors), ("hf", hf)):
        tasks = {t: len(e.classes) for t, e in expected.items()}
        folder = tmp_path / source
        folder.mkdir()
        zoo, models, heads = zoo_over(folder, tasks, root)
        assert zoo.has_data, zoo.missing()
        for task, want in expected.items():
            assert zoo.class_names(task) == list(want.classes)  # the head's row order (and zero-shot prompts)
            predicted = zoo.predictions(zoo.finetuned(task), task, "test")
            reference = direct(models[task], heads[task], want.images["test"])
            assert torch.equal(predicted, reference), (source, task)
            accuracy = (reference == torch.tensor(want.labels["test"])).float().mean().item()
            assert zoo.evaluate(zoo.finetuned(task), task) == pytest.approx(accuracy)


def test_a_missing_task_is_named_and_weights_still_work(tmp_path: Path) -> None:
    location = tmp_path / "location"
    write_authors_location(location, ("MNIST", "SVHN"))
    zoo, models, _ = zoo_over(tmp_path, {"MNIST": 10, "SVHN": 10, "DTD": 3}, location)
    assert not zoo.has_data
    gaps = zoo.missing("test")
    assert len(gaps) == 1 and "no test data for DTD" in gaps[0] and "dtd/train, dtd/val" in gaps[0]
    with pytest.raises(IsoscopeError, match="cannot compute accuracy: no test data for DTD"):
        zoo.evaluate(zoo.pretrained(), "DTD")
    assert torch.equal(zoo.finetuned("DTD")["conv1.weight"], models["DTD"].state_dict()["conv1.weight"])
    assert 0.0 <= zoo.evaluate(zoo.pretrained(), "MNIST") <= 1.0  # the tasks that have data still score


# --- the quick mode ------------------------------------------------------------------------------

@pytest.mark.parametrize("counts", [(5, 5, 5), (1, 7, 30), (12, 1, 0, 3), (100,)])
@pytest.mark.parametrize("budget", [1, 4, 9, 13, 50, 500])
def test_stratified_sample(counts: tuple[int, ...], budget: int) -> None:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])[torch.randperm(sum(counts),
                                                                            generator=torch.Generator().manual_seed(3))]
    picked = stratified_sample(labels, budget)
    total = len(labels)
    assert len(picked) == min(budget, total) and picked.tolist() == sorted(set(picked.tolist()))
    assert torch.equal(picked, stratified_sample(labels, budget))  # a fixed seed
    for c, n in enumerate(counts):  # every class gets its proportional share, rounded
        share = n * min(budget, total) / total
        assert int(share) <= int((labels[picked] == c).sum()) <= int(share) + 1


def test_quick_mode_scores_the_sample(authors: tuple, tmp_path: Path) -> None:
    root, expected = authors
    budget = 7
    zoo, models, heads = zoo_over(tmp_path, {"MNIST": 10, "Cars": 3}, root, max_images=budget)
    assert zoo.sample_size("MNIST", "test") == budget  # 20 test images: sampled
    assert zoo.sample_size("Cars", "test") is None  # 5 test images: the budget covers the split
    want = expected["MNIST"]
    picked = stratified_sample(torch.tensor(want.labels["test"]), budget).tolist()
    reference = direct(models["MNIST"], heads["MNIST"], [want.images["test"][i] for i in picked])
    assert torch.equal(zoo.predictions(zoo.finetuned("MNIST"), "MNIST", "test"), reference)
    (tmp_path / "zero").mkdir()
    with pytest.raises(IsoscopeError, match="at least 1"):
        zoo_over(tmp_path / "zero", {"MNIST": 10}, root, max_images=0)


def test_zero_shot_templates_are_the_authors_sets() -> None:
    sizes = {"MNISTVal": 1, "svhn": 1, "EuroSAT": 3, "DTD": 8, "SUN397Val": 2, "RESISC45": 18, "GTSRB": 3,
             "stanford_cars": 8, "CarsVal": 8}
    for task, size in sizes.items():
        templates = templates_for(task)
        assert len(templates) == len(set(templates)) == size and all("{}" in t for t in templates), task
    assert "satellite view of the {}." in templates_for("resisc45") and "a photo of the {} object." in templates_for("dtd")
