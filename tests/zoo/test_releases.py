"""The public releases as they are published (tiny replicas from tests/zoo/replicas.py): each
opens without trust and without the authors' code, its tensors are bit-equal to what was
written, its features equal a forward pass of the original tower, its heads (stored or built
from the text tower) equal the reference, and a payload hidden in its pickles never runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import open_clip.model
import pytest
import torch
from open_clip.tokenizer import tokenize

from merging.errors import CheckpointError, UntrustedPickleError
from merging.io import open_checkpoint
from tests.zoo import replicas as R
from zoo.folders import convert_folder, detect_layout, open_folder
from zoo.model import load_encoder
from zoo.pretrained import PretrainedMissingError
from zoo.text_heads import templates_for

TASKS = ("MNIST", "SVHN", "DTD")
CLASSES = ("cat", "dog", "emu")


class Touch:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def models() -> dict:
    base = R.tower(0)
    return {"": base, **{t: R.moved(base, i + 1) for i, t in enumerate(TASKS)}}


@pytest.fixture(scope="module")
def text() -> torch.nn.Module:
    return R.text_tower(5)


def authors_code_absent() -> bool:
    return importlib.util.find_spec("src") is None and not hasattr(open_clip.model, "VisualTransformer")


def assert_same_network(zoo, models: dict, task: str) -> None:
    """Bit-equal tensors and the same features as the original tower."""
    state, want = zoo.finetuned(task) if task else zoo.pretrained(), models[task].state_dict()
    assert list(state) == list(want) and all(torch.equal(state[k], v) for k, v in want.items())
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(load_encoder(state, zoo.config, "cpu")(images), models[task](images))


def reference_head(text: torch.nn.Module, classes: list[str], task: str) -> torch.Tensor:
    """CLIP's zero-shot classifier computed on the original text tower."""
    rows = []
    with torch.no_grad():
        for name in classes:
            f = torch.nn.functional.normalize(text(tokenize([t.format(name) for t in templates_for(task)])), dim=-1)
            rows.append(torch.nn.functional.normalize(f.mean(0), dim=0))
    return torch.stack(rows)


def write_data(root: Path, tasks: tuple[str, ...] = TASKS, classes: tuple[str, ...] = CLASSES) -> Path:
    for task in tasks:
        for split in ("val", "test"):
            for c, name in enumerate(classes):
                (root / task / split / name).mkdir(parents=True)
                from PIL import Image

                Image.new("RGB", (32, 32), (40 * c, 80, 200 - 50 * c)).save(root / task / split / name / "0.png")
    return root


# ---------------------------------------------------------------- task_vectors


@pytest.mark.parametrize("legacy", [False, True])
def test_task_vectors_release_opens_without_trust_or_the_authors_code(models: dict, text, tmp_path: Path,
                                                                     legacy: bool) -> None:
    marker = tmp_path / "pwned"
    root = R.write_task_vectors(tmp_path / "ckpt", models, text, legacy=legacy, payload=Touch(marker))
    assert authors_code_absent()
    raw = (root / "ViT-T-8" / "zeroshot.pt").read_bytes()
    assert b"src.modeling" in raw and b"VisualTransformer" in raw and b"torchvision" in raw
    whole = R.image_encoder(models[""], text).state_dict()  # what Module.state_dict() gives
    ckpt = open_checkpoint(root / "ViT-T-8" / "zeroshot.pt")
    assert list(ckpt) == list(whole) and "model.attn_mask" not in ckpt  # non-persistent buffer left out
    assert all(torch.equal(ckpt[k], v) for k, v in whole.items())
    zoo = open_folder(root, device="cpu")
    assert zoo.files.layout == "task_vectors" and zoo.tasks == sorted(TASKS) and zoo.config.act == "quick_gelu"
    for task in ("", "SVHN"):
        assert_same_network(zoo, models, task)
    for i, task in enumerate(TASKS):
        head = zoo.head(task)
        assert torch.equal(head.weight, R.random_head(10 + i + 1)["weight"])
        assert torch.equal(head.bias, R.random_head(10 + i + 1)["bias"])
    assert not marker.exists()  # the payload sat in MNIST's pickle (an attribute): read, never run


def test_a_payload_in_place_of_a_tensor_is_refused_and_never_runs(models: dict, text, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    root = R.write_task_vectors(tmp_path / "ckpt", models, text)
    with R.authors_modules():
        encoder = R.image_encoder(models["MNIST"], text)
        encoder.model.visual._parameters["proj"] = Touch(marker)
        torch.save(encoder, root / "ViT-T-8" / "MNIST" / "finetuned.pt")
    with pytest.raises(UntrustedPickleError, match="parameter 'model.visual.proj' is a call of builtins.getattr, not a tensor"):
        open_folder(root)
    assert not marker.exists()


# ---------------------------------------------------------------- TALL-masks


def tall(tmp_path: Path, models: dict, text, model: str = "ViT-B-32", hf: bool = False) -> Path:
    """The release without θ0: <root>/<model>/… (or the HF snapshot's single_task/<model>/…)."""
    root = tmp_path / "tall"
    if hf:
        repo = root / "models--someone--tall_masks"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("abc123")
        R.write_tall_masks(repo / "snapshots" / "abc123" / "single_task" / model, models, text)
        return repo
    R.write_tall_masks(root / model, models, text)
    return root


def test_tall_masks_without_theta0_names_both_options(models: dict, text, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HOME", str(tmp_path))
    root = tall(tmp_path, models, text)
    assert detect_layout(root) == "tall_masks"
    with pytest.raises(PretrainedMissingError) as err:
        open_folder(root)
    message = str(err.value)
    assert "no zero-shot model" in message and "--pretrained" in message and "Pretrained model file" in message
    assert "models--timm--vit_base_patch32_clip_224.openai" in message


@pytest.mark.parametrize("hf", [False, True])
def test_tall_masks_with_an_explicit_theta0_and_pickled_heads(models: dict, text, tmp_path: Path, hf: bool) -> None:
    root = tall(tmp_path, models, text, hf=hf)
    theta0 = tmp_path / "zeroshot.pt"
    torch.save(R.encoder_state(models[""], text, keep_lang=True), theta0)
    zoo = open_folder(root, pretrained=theta0, device="cpu")
    assert zoo.files.layout == "tall_masks" and zoo.tasks == sorted(TASKS) and zoo.config.act == "quick_gelu"
    assert zoo.notes == [f"θ0 (zero-shot model): {theta0}"]
    for task in ("", "DTD"):
        assert_same_network(zoo, models, task)
    for i, task in enumerate(TASKS):
        assert torch.equal(zoo.head(task).weight, R.random_head(11 + i)["weight"])


def test_tall_masks_theta0_from_open_clips_cache_is_found_never_downloaded(models: dict, text, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "r1"
    snapshot.mkdir(parents=True)
    full = {k.removeprefix("model."): v for k, v in R.encoder_state(models[""], text, keep_lang=True).items()}
    torch.save(full, snapshot / "open_clip_pytorch_model.bin")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    zoo = open_folder(tall(tmp_path, models, text), device="cpu")
    assert zoo.files.pretrained == (snapshot / "open_clip_pytorch_model.bin").resolve()
    assert "open_clip's cache" in zoo.notes[0]
    assert_same_network(zoo, models, "")


def test_text_tower_heads_from_a_tall_theta0(models: dict, text, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOSCOPE_CACHE", str(tmp_path / "cache"))
    root = tall(tmp_path, models, text)
    (root / "ViT-B-32" / "head_DTDVal.pt").unlink()
    theta0 = tmp_path / "zeroshot.pt"
    torch.save(R.encoder_state(models[""], text, keep_lang=True), theta0)
    data = write_data(tmp_path / "data")
    zoo = open_folder(root, data=data, pretrained=theta0, device="cpu")
    assert zoo.missing() == []
    built = zoo.head("DTD").weight
    assert zoo.head_origin["DTD"] == "text tower"
    assert torch.allclose(built, reference_head(text, list(CLASSES), "DTD"), atol=1e-6)
    assert len(list((tmp_path / "cache" / "zeroshot-heads").iterdir())) == 1
    again = open_folder(root, data=data, pretrained=theta0, device="cpu")  # from the disk cache
    assert torch.equal(again.head("DTD").weight, built)
    assert 0.0 <= zoo.evaluate(zoo.pretrained(), "DTD") <= 1.0
    vision_only = tmp_path / "vision.pt"
    torch.save(R.encoder_state(models[""], text, keep_lang=False), vision_only)  # no text transformer
    zoo = open_folder(root, data=data, pretrained=vision_only, device="cpu")
    assert zoo.missing() == [f"no head file for task DTD (head_DTD.safetensors with weight (classes, {R.OUT}) in "
                             f"{root / 'ViT-B-32'}) and no text tower in θ0 to build one"]


# ---------------------------------------------------------------- class order


def test_class_order_follows_classnames_txt_and_warns_when_unmatched(models: dict, text, tmp_path: Path) -> None:
    root = R.write_task_vectors(tmp_path / "ckpt", models, text)
    data = write_data(tmp_path / "data")
    zoo = open_folder(root, data=data, device="cpu")
    sorted_order = zoo.predictions(zoo.pretrained(), "MNIST", "test")
    labels, count = zoo._labels("MNIST", "test")
    assert labels.tolist() == [0, 1, 2] and count == 3
    (data / "MNIST" / "classnames.txt").write_text("Emu\ncat\ndog\n")  # the authors' order: rows 0..2
    zoo = open_folder(root, data=data, device="cpu")
    assert zoo.class_names("MNIST") == ["Emu", "cat", "dog"]
    assert zoo._labels("MNIST", "test")[0].tolist() == [1, 2, 0]  # cat, dog, emu folders -> rows 1, 2, 0
    assert torch.equal(zoo.predictions(zoo.pretrained(), "MNIST", "test"), sorted_order)  # features unchanged
    (data / "MNIST" / "classnames.txt").write_text("zebra\ncat\ndog\n")
    zoo = open_folder(root, data=data, device="cpu")
    assert zoo._labels("MNIST", "test")[0].tolist() == [0, 1, 2]
    assert zoo.notes == ["task MNIST: class folders emu are not among its 3 class names; "
                         "scoring with the sorted folder order instead"]
    (root / "ViT-T-8" / "isoscope.json").write_text(json.dumps({"classes": {"MNIST": ["dog", "emu", "cat"]}}))
    zoo = open_folder(root, data=data, device="cpu")
    assert zoo._labels("MNIST", "test")[0].tolist() == [2, 0, 1]


# ---------------------------------------------------------------- FusionBench / Hugging Face hub cache


@pytest.mark.parametrize("bare", [False, True], ids=["transformers4-nested", "transformers5-bare"])
def test_hub_cache_with_symlinked_blobs_and_text_tower_heads(models: dict, text, tmp_path: Path, bare: bool,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOSCOPE_CACHE", str(tmp_path / "cache"))
    hub = R.write_hf_hub(tmp_path / "huggingface" / "hub", models, text, bare)
    assert (next(hub.glob("models--openai--*/snapshots/*/model.safetensors"))).is_symlink()
    for path in (hub, hub.parent):  # the hub folder or HF_HOME above it
        assert detect_layout(path) == "hf_hub"
    zoo = open_folder(hub, data=write_data(tmp_path / "data", tasks=tuple(t.lower() for t in TASKS)), device="cpu")
    assert zoo.tasks == sorted(t.lower() for t in TASKS) and zoo.config.act == "quick_gelu"
    assert_same_network(zoo, models, "")
    got, want = zoo.finetuned("svhn"), {**models["SVHN"].state_dict(), "proj": models[""].proj}
    assert all(torch.equal(got[k], want[k]) for k in want)  # fine-tunes without projection take θ0's
    assert zoo.missing() == []
    assert torch.allclose(zoo.head("mnist").weight, reference_head(text, list(CLASSES), "mnist"), atol=1e-6)
    assert zoo.head_origin == {"mnist": "text tower"}


# ---------------------------------------------------------------- conversion


def test_conversion_is_atomic_and_leaves_nothing_on_failure(models: dict, text, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo.folders as F

    root = R.write_task_vectors(tmp_path / "ckpt", models, text)
    out = tmp_path / "out"
    calls = []
    real = F.save_safetensors

    def failing(state, path, metadata=None):
        calls.append(Path(path).name)
        if Path(path).name.startswith("head_"):
            raise CheckpointError("disk full")
        real(state, path, metadata)

    monkeypatch.setattr(F, "save_safetensors", failing)
    with pytest.raises(CheckpointError, match="disk full"):
        convert_folder(root, out)
    assert "pretrained.safetensors" in calls and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left either
    monkeypatch.setattr(F, "save_safetensors", real)
    convert_folder(root, out)
    assert json.loads((out / "isoscope.json").read_text())["act"] == "quick_gelu"
    assert open_folder(out).config.act == "quick_gelu"
    with pytest.raises(CheckpointError, match="already exists"):
        convert_folder(root, out)


def test_every_hostile_payload_in_a_module_pickle_stays_inert(models: dict, text, tmp_path: Path) -> None:
    """The hostile corpus, hidden as an attribute of a pickled ImageEncoder (zip and legacy):
    the file opens without trust, and no marker appears."""
    from tests.merging.test_io_hostile import PAYLOAD_NAMES, payloads

    for i, name in enumerate(PAYLOAD_NAMES):
        marker = tmp_path / f"M{i}"
        path = tmp_path / f"{i}.pt"
        with R.authors_modules():
            torch.save(R.image_encoder(models[""], text, payload=payloads(marker)[name]), path,
                       _use_new_zipfile_serialization=i % 2 == 0)
        ckpt = open_checkpoint(path)
        assert torch.equal(ckpt["model.visual.proj"], models[""].proj)
        assert not marker.exists(), name
