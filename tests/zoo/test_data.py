"""ImageFolder evaluation data: CLIP preprocessing, class order, splits, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from open_clip.transform import image_transform
from PIL import Image

from zoo.data import DataError, ImageFolderData, Preprocess


def write_image(path: Path, size: tuple[int, int], seed: int) -> Image.Image:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8).numpy()
    image = Image.fromarray(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return image


@pytest.mark.parametrize("size", [(40, 36), (20, 50), (32, 32)])
def test_preprocessing_matches_open_clips_eval_transform(tmp_path: Path, size: tuple[int, int]) -> None:
    image = write_image(tmp_path / "x.png", size, seed=1)
    prep = Preprocess(image_size=32)
    crop = prep.crop(image)
    assert crop.dtype == torch.uint8 and crop.shape == (3, 32, 32)
    want = image_transform(32, is_train=False)(image)  # resize shorter side, centre crop, CLIP mean/std
    assert torch.allclose(prep.normalise(crop[None])[0], want, atol=1e-5)


def test_normalise_uses_the_given_mean_and_std() -> None:
    prep = Preprocess(image_size=2, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    images = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert prep.normalise(images)[0, :, 0, 0].tolist() == pytest.approx([2.0, 1.0, 0.5])


def test_labels_follow_sorted_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i, (name, count) in enumerate((("zebra", 1), ("ant", 2), ("mole", 3))):
        for j in range(count):
            write_image(root / "Cars" / "test" / name / f"{j}.jpg", (10, 12), seed=10 * i + j)
    (root / "Cars" / "test" / "ant" / "notes.txt").write_text("skipped")
    data = ImageFolderData(root)
    split = data.load("cars", "test", Preprocess(8))  # task folders match case-insensitively
    assert split.classes == ("ant", "mole", "zebra")
    assert split.labels.tolist() == [0, 0, 1, 1, 1, 2]
    assert split.images.shape == (6, 3, 8, 8)
    assert data.load("Cars", "test", Preprocess(8)) is data.load("Cars", "test", Preprocess(8))  # cached
    assert [b.shape[0] for b in split.batches(Preprocess(8), size=4)] == [4, 2]
    assert data.splits("Cars") == ["test"] and data.missing(["Cars", "DTD"], "test") == ["DTD"]


def test_missing_and_broken_data_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderData(tmp_path / "nowhere")
    (tmp_path / "DTD" / "val" / "a").mkdir(parents=True)
    data = ImageFolderData(tmp_path)
    with pytest.raises(DataError, match="no test data for task DTD"):
        data.load("DTD", "test", Preprocess(8))
    with pytest.raises(DataError, match="holds no images"):
        data.load("DTD", "val", Preprocess(8))
    with pytest.raises(DataError, match="unknown split 'train'"):
        data.load("DTD", "train", Preprocess(8))
    (tmp_path / "DTD" / "val" / "a" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png: not a readable image"):
        data.load("DTD", "val", Preprocess(8))
