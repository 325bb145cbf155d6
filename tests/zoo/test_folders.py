"""Real checkpoint folders, end to end: every layout is written from small random open_clip
visual towers (no download), detected, loaded, compared tensor by tensor with what was written,
and scored on a tiny ImageFolder tree against a direct forward pass."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from open_clip.transform import image_transform
from open_clip.transformer import QuickGELU, VisionTransformer
from PIL import Image

from merging.errors import CheckpointError, IsoscopeError, MismatchError, NonFiniteError, UntrustedPickleError
from merging.io import save_safetensors
from zoo import load_zoo
from zoo.folders import FolderZoo, convert_folder, detect_layout, open_files, open_folder
from zoo.hf import hf_to_open_clip, open_clip_to_hf

TASKS = ("MNIST", "SVHN", "DTD")
CLASSES = ("cat", "dog", "emu")  # 3 classes per task, 2 images per class and split
WIDTH, OUT = 64, 32


# ---------------------------------------------------------------- builders


def tower(seed: int, act: type[torch.nn.Module] = torch.nn.GELU, heads: int = 1) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(image_size=32, patch_size=8, width=WIDTH, layers=2, heads=heads, mlp_ratio=4.0,
                             output_dim=OUT, act_layer=act).eval()


def finetune(base: VisionTransformer, seed: int) -> VisionTransformer:
    """A copy of ``base`` with every tensor moved a little (a stand-in fine-tune)."""
    model = pickle.loads(pickle.dumps(base))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def random_head(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(len(CLASSES), OUT, generator=gen), "bias": torch.randn(len(CLASSES), generator=gen)}


class ImageEncoder(torch.nn.Module):
    """Shaped like task_vectors' ImageEncoder: the CLIP model under ``model``, its tower at ``model.visual``."""

    def __init__(self, visual: VisionTransformer) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.visual = visual
        self.model.logit_scale = torch.nn.Parameter(torch.ones([]))  # a non-visual key, dropped on load


class ClassificationHead(torch.nn.Linear):
    """Shaped like task_vectors' ClassificationHead (a pickled Linear)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__(weight.shape[1], weight.shape[0])
        self.weight.data, self.bias.data = weight.clone(), bias.clone()


def rebuild(values: list) -> torch.Tensor:
    return torch.tensor(values)


class Rebuilt:
    """Pickles as a call of ``rebuild``: harmless, but only running code turns it into a tensor."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.values = tensor.tolist()

    def __reduce__(self) -> tuple:
        return (rebuild, (self.values,))


class Hostile:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def prefixed(model: VisionTransformer, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v.clone() for k, v in model.state_dict().items()}


def write_data(root: Path, tasks: tuple[str, ...] = TASKS) -> Path:
    """``<root>/<Task>/{val,test}/<class>/<i>.png``: 40×36 random RGB images (non-square, so resize and crop matter)."""
    gen = torch.Generator().manual_seed(7)
    for task in tasks:
        for split in ("val", "test"):
            for name in CLASSES:
                (root / task / split / name).mkdir(parents=True)
                for i in range(2):
                    pixels = torch.randint(0, 256, (36, 40, 3), generator=gen, dtype=torch.uint8).numpy()
                    Image.fromarray(pixels).save(root / task / split / name / f"{i}.png")
        (root / task / "test" / "README.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def models() -> dict[str, dict[str, VisionTransformer]]:
    """Per activation: θ0 and one fine-tune per task."""
    out = {}
    for act, cls, heads in (("gelu", torch.nn.GELU, 2), ("quick_gelu", QuickGELU, 1)):
        base = tower(0, cls, heads)
        out[act] = {"": base, **{t: finetune(base, i + 1) for i, t in enumerate(TASKS)}}
    return out


def write_tall_masks(root: Path, models: dict[str, VisionTransformer]) -> Path:
    model_dir = root / "ViT-T-8"
    for i, task in enumerate(TASKS):
        (model_dir / f"{task}Val").mkdir(parents=True)
        torch.save(prefixed(models[task], "model.visual."), model_dir / f"{task}Val" / "nonlinear_finetuned.pt")
        torch.save(random_head(10 + i), model_dir / f"head_{task}Val.pt")
    torch.save(prefixed(models[""], "model.visual."), model_dir / "MNISTVal" / "nonlinear_zeroshot.pt")
    return root


def write_task_vectors(root: Path, models: dict[str, VisionTransformer]) -> Path:
    model_dir = root / "ViT-T-8"
    for i, task in enumerate(TASKS):
        (model_dir / task).mkdir(parents=True)
        torch.save(ImageEncoder(models[task]), model_dir / task / "finetuned.pt")
        torch.save(ClassificationHead(**random_head(10 + i)), model_dir / f"head_{task}.pt")
    torch.save(ImageEncoder(models[""]), model_dir / "zeroshot.pt")
    return root


def hf_config(heads: int) -> dict:
    """A CLIPConfig-style config.json (vision part nested), as transformers writes it."""
    return {"architectures": ["CLIPModel"], "vision_config": {
        "hidden_act": "quick_gelu", "hidden_size": WIDTH, "image_size": 32, "intermediate_size": 4 * WIDTH,
        "num_attention_heads": heads, "num_hidden_layers": 2, "patch_size": 8, "projection_dim": OUT}}


def write_hf(root: Path, models: dict[str, VisionTransformer], base_name: str = "clip-vit-tiny",
             task_prefix: str = "clip-vit-tiny_") -> Path:
    """FusionBench's layout: <base>/ (a CLIPModel: with projection and a text key) and <base>_<task>/
    (CLIPVisionModel saves: no projection)."""
    for task, model in models.items():
        folder = root / (f"{task_prefix}{task.lower()}" if task else base_name)
        folder.mkdir(parents=True)
        state = open_clip_to_hf(model.state_dict())
        if task:
            del state["visual_projection.weight"]
        else:
            state["text_model.final_layer_norm.weight"] = torch.ones(8)
            state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
        save_safetensors(state, folder / "model.safetensors")
        (folder / "config.json").write_text(json.dumps(hf_config(heads=1)))
    for i, task in enumerate(TASKS):
        save_safetensors(random_head(10 + i), root / f"head_{task.lower()}.safetensors")
    return root


def write_plain(root: Path, models: dict[str, VisionTransformer]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    save_safetensors(models[""].state_dict(), root / "pretrained.safetensors")
    for i, task in enumerate(TASKS):
        save_safetensors(prefixed(models[task], "visual."), root / f"{task}.safetensors")
        save_safetensors(random_head(10 + i), root / f"head_{task}.safetensors")
    (root / "isoscope.json").write_text(json.dumps({"heads": 2}))
    return root


# layout -> (writer, activation of its models, task name as the layout spells it)
LAYOUTS = {
    "tall_masks": (write_tall_masks, "quick_gelu", str),
    "task_vectors": (write_task_vectors, "quick_gelu", str),
    "hf": (write_hf, "quick_gelu", str.lower),
    "plain": (write_plain, "gelu", str),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def written(request: pytest.FixtureRequest, models: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    layout = request.param
    writer, act, spell = LAYOUTS[layout]
    root = writer(tmp_path_factory.mktemp(layout), models[act])
    return layout, root, models[act], spell


def opened(written: tuple, data: Path | None = None) -> FolderZoo:
    layout, root, _, _ = written
    return open_folder(root, data=data, trust_pickle=layout == "task_vectors", device="cpu")


def direct_predictions(model: VisionTransformer, head: dict[str, torch.Tensor], folder: Path) -> tuple:
    """A forward pass built independently: open_clip's own eval transform, the raw tower, W·f̂ + b."""
    transform = image_transform(32, is_train=False)
    files = [(f, c) for c, name in enumerate(CLASSES) for f in sorted((folder / name).glob("*.png"))]
    images = torch.stack([transform(Image.open(f)) for f, _ in files])
    with torch.no_grad():
        features = torch.nn.functional.normalize(model(images), dim=-1)
    predicted = (features @ head["weight"].T + head["bias"]).argmax(-1)
    return predicted, torch.tensor([c for _, c in files])


# ---------------------------------------------------------------- every layout


def test_detects_the_layout_from_root_and_model_folder(written: tuple) -> None:
    layout, root, _, _ = written
    assert detect_layout(root) == layout
    inner = [d for d in root.iterdir() if d.is_dir()]
    if layout in ("tall_masks", "task_vectors"):  # <root>/<model>: either level works
        assert detect_layout(inner[0]) == layout


def test_loaded_tensors_equal_what_was_written(written: tuple) -> None:
    layout, _, models, spell = written
    zoo = opened(written)
    assert zoo.tasks == sorted(spell(t) for t in TASKS) and zoo.files.layout == layout
    expected = models[""].state_dict()
    assert list(zoo.pretrained()) == list(expected)  # open_clip names, open_clip order
    assert all(torch.equal(zoo.pretrained()[k], v) for k, v in expected.items())
    for task in TASKS:
        got, want = zoo.finetuned(spell(task)), models[task].state_dict()
        assert set(got) == set(want)
        if layout == "hf":  # the fine-tunes were saved without projection: it is θ0's
            want = {**want, "proj": expected["proj"]}
        assert all(torch.equal(got[k], want[k]) for k in want), task
    lazy = zoo.finetuned(spell(TASKS[0]))  # a read-only view: nothing is loaded until a key is read
    assert not isinstance(lazy, dict) and lazy.shape("proj") == tuple(expected["proj"].shape)


def test_config_follows_the_layout(written: tuple) -> None:
    layout, *_ = written
    config = opened(written).config
    assert (config.act, config.heads) == (("gelu", 2) if layout == "plain" else ("quick_gelu", 1))
    assert (config.image_size, config.patch_size, config.width, config.layers, config.output_dim) == (32, 8, WIDTH, 2, OUT)


def test_evaluate_agrees_with_a_direct_forward_pass(written: tuple, data: Path) -> None:
    layout, root, models, spell = written
    zoo = opened(written, data)
    assert zoo.has_data and zoo.missing() == []
    scores = zoo.evaluate_tasks(zoo.finetuned(spell("SVHN")), split="test")
    assert set(scores) == set(zoo.tasks)
    model = models["SVHN"]
    if layout == "hf":  # saved without projection: the fine-tune runs with θ0's
        model = pickle.loads(pickle.dumps(model))
        model.proj.data = models[""].proj.data.clone()
    for i, task in enumerate(TASKS):
        predicted, labels = direct_predictions(model, random_head(10 + i), data / task / "test")
        assert torch.equal(zoo.predictions(zoo.finetuned(spell("SVHN")), spell(task), "test"), predicted)
        assert scores[spell(task)] == pytest.approx(float((predicted == labels).float().mean()), abs=1e-9)
    assert zoo.evaluate(zoo.pretrained(), spell("DTD"), "val") == pytest.approx(
        float(torch.eq(*direct_predictions(models[""], random_head(12), data / "DTD" / "val")).float().mean()))


def test_without_data_weight_views_work_and_accuracy_says_what_is_missing(written: tuple) -> None:
    zoo = opened(written)
    assert not zoo.has_data
    assert len(zoo.all_finetuned()) == len(TASKS)
    with pytest.raises(IsoscopeError, match="no evaluation data folder"):
        zoo.evaluate(zoo.pretrained(), zoo.tasks[0])


def test_fingerprint_is_stable_and_tracks_files(written: tuple, tmp_path: Path) -> None:
    layout, root, models, spell = written
    assert opened(written).fingerprint == opened(written).fingerprint
    copy = tmp_path / "copy"
    convert_folder(root, copy, trust_pickle=True)
    before = open_folder(copy).fingerprint
    save_safetensors(finetune(models[""], 99).state_dict(), copy / f"{spell('DTD')}.safetensors")
    assert open_folder(copy).fingerprint != before


def test_converted_folder_is_plain_safetensors_and_scores_the_same(written: tuple, data: Path,
                                                                   tmp_path: Path) -> None:
    zoo = opened(written, data)
    out = convert_folder(zoo.files.root, tmp_path / "converted", trust_pickle=True)
    assert detect_layout(out) == "plain"
    again = open_folder(out, data=data, device="cpu")  # no trust needed any more
    assert again.tasks == zoo.tasks and again.config == zoo.config
    task = zoo.tasks[1]
    assert all(torch.equal(again.finetuned(task)[k], v) for k, v in zoo.finetuned(task).items())
    assert again.evaluate_tasks(again.finetuned(task)) == zoo.evaluate_tasks(zoo.finetuned(task))


def test_load_zoo_dispatches_folders_to_open_folder(written: tuple) -> None:
    layout, root, _, _ = written
    zoo = load_zoo(str(root), trust_pickle=layout == "task_vectors", device="cpu")
    assert isinstance(zoo, FolderZoo) and zoo.files.layout == layout


# ---------------------------------------------------------------- Hugging Face mapping


def hf_reference_features(state: dict[str, torch.Tensor], images: torch.Tensor, heads: int) -> torch.Tensor:
    """CLIPVisionModelWithProjection's forward written from Hugging Face names alone (q/k/v apart,
    scaled by head_dim^-0.5, quick_gelu, pre_layrnorm, post_layernorm on the class token)."""
    s = {k.removeprefix("vision_model."): v for k, v in state.items()}
    ln = lambda x, name: torch.nn.functional.layer_norm(x, x.shape[-1:], s[f"{name}.weight"], s[f"{name}.bias"])  # noqa: E731
    lin = lambda x, name: x @ s[f"{name}.weight"].T + s[f"{name}.bias"]  # noqa: E731
    patches = torch.nn.functional.conv2d(images, s["embeddings.patch_embedding.weight"], stride=8)  # (N, D, g, g)
    x = patches.flatten(2).transpose(1, 2)  # (N, g², D)
    x = torch.cat([s["embeddings.class_embedding"].expand(x.shape[0], 1, -1), x], dim=1)
    x = ln(x + s["embeddings.position_embedding.weight"], "pre_layrnorm")
    n, t, d = x.shape
    for i in range(2):
        p = f"encoder.layers.{i}."
        h = ln(x, p + "layer_norm1")
        q, k, v = (lin(h, p + f"self_attn.{w}_proj").view(n, t, heads, d // heads).transpose(1, 2) for w in "qkv")
        attn = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1) @ v  # (N, H, T, d/H)
        x = x + lin(attn.transpose(1, 2).reshape(n, t, d), p + "self_attn.out_proj")
        h = lin(ln(x, p + "layer_norm2"), p + "mlp.fc1")
        x = x + lin(h * torch.sigmoid(1.702 * h), p + "mlp.fc2")
    return ln(x[:, 0], "post_layernorm") @ state["visual_projection.weight"].T  # (N, P)


def test_hf_mapping_gives_the_same_encoder_outputs() -> None:
    from zoo.model import VitConfig, load_encoder

    model = tower(3, QuickGELU, heads=4)
    images = torch.randn(5, 3, 32, 32)
    hf_state = open_clip_to_hf(model.state_dict())
    mapped = hf_to_open_clip(hf_state)
    config = VitConfig(image_size=32, patch_size=8, width=WIDTH, layers=2, heads=4, output_dim=OUT, act="quick_gelu")
    with torch.no_grad():
        want = model(images)
        reference = hf_reference_features(hf_state, images, heads=4)
        got = load_encoder(mapped, config, device="cpu")(images)
    assert torch.allclose(reference, want, atol=1e-5)  # the HF names hold the same network
    assert torch.allclose(got, want, atol=1e-5)
    assert set(hf_state) >= {"vision_model.encoder.layers.1.self_attn.v_proj.bias", "visual_projection.weight"}
    del hf_state["vision_model.encoder.layers.1.self_attn.k_proj.weight"]
    with pytest.raises(CheckpointError, match="incomplete Hugging Face checkpoint: missing "
                                              "vision_model.encoder.layers.1.self_attn.k_proj.weight"):
        hf_to_open_clip(hf_state)
    with pytest.raises(CheckpointError, match="no open_clip counterpart: vision_model.encoder.layers.0.extra.weight"):
        hf_to_open_clip({**hf_state, "vision_model.encoder.layers.0.extra.weight": torch.ones(1)})


def test_hf_base_can_be_named_pretrained(models: dict, tmp_path: Path) -> None:
    zoo = open_folder(write_hf(tmp_path / "a", models["quick_gelu"], base_name="pretrained", task_prefix=""))
    assert zoo.tasks == ["dtd", "mnist", "svhn"] and zoo.files.pretrained.name == "pretrained"
    zoo = open_folder(write_hf(tmp_path / "b", models["quick_gelu"], base_name="pretrained", task_prefix="ft-"))
    assert zoo.tasks == ["ft-dtd", "ft-mnist", "ft-svhn"]
    root = write_hf(tmp_path / "c", models["quick_gelu"], base_name="openai", task_prefix="ft-")
    with pytest.raises(CheckpointError, match="cannot tell which Hugging Face folder is the pretrained model"):
        open_folder(root)


# ---------------------------------------------------------------- pickles and trust


def test_pickled_layout_opens_without_trust(models: dict, tmp_path: Path) -> None:
    root = write_task_vectors(tmp_path, models["quick_gelu"])
    zoo = open_folder(root)  # whole pickled modules, read without running code
    assert all(torch.equal(zoo.finetuned("MNIST")[k], v) for k, v in models["quick_gelu"]["MNIST"].state_dict().items())


def test_convert_command_refuses_uninterpretable_pickles_without_trust_then_writes_a_plain_folder(
        models: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`python -m zoo convert`: a pickled-module folder converts without trust; a file the
    code-free reader cannot interpret gives one readable line and exit 2 without --trust-pickle
    (nothing is written); the converted folder opens without trust and holds the same weights."""
    from zoo.__main__ import main

    root = write_task_vectors(tmp_path / "tv", models["quick_gelu"])
    out = tmp_path / "converted"
    assert main(["convert", "--folder", str(root), "--out", str(out)]) == 0
    plain, pickled = open_folder(out), open_folder(root)
    assert detect_layout(out) == "plain" and plain.tasks == pickled.tasks
    task = plain.tasks[0]
    assert all(torch.equal(plain.finetuned(task)[k], v) for k, v in pickled.finetuned(task).items())
    odd = write_plain(tmp_path / "odd", models["gelu"])
    torch.save({"weight": Rebuilt(torch.ones(3, OUT))}, odd / "head_MNIST.pt")
    (odd / "head_MNIST.safetensors").unlink()
    assert main(["convert", "--folder", str(odd), "--out", str(tmp_path / "odd-out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "cannot interpret" in err[-1] and "--trust-pickle" in err[-1]
    assert not (tmp_path / "odd-out").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert main(["convert", "--folder", str(odd), "--out", str(tmp_path / "odd-out"), "--trust-pickle"]) == 0
    assert torch.equal(open_folder(tmp_path / "odd-out").head("MNIST").weight, torch.ones(3, OUT))
    assert main(["convert", "--out", str(tmp_path / "x")]) == 2  # no --folder: a usage line, not a traceback


def test_hostile_head_never_runs_without_trust(models: dict, data: Path, tmp_path: Path) -> None:
    root = write_tall_masks(tmp_path / "ckpt", models["quick_gelu"])
    marker = tmp_path / "pwned"
    torch.save({"weight": Hostile(marker)}, root / "ViT-T-8" / "head_MNISTVal.pt")
    zoo = open_folder(root, data=data)  # weight views need no head
    assert zoo.finetuned("MNIST")["proj"].shape == (WIDTH, OUT)
    with pytest.raises(UntrustedPickleError):
        zoo.evaluate(zoo.pretrained(), "MNIST")
    assert not marker.exists()


def test_hostile_task_vectors_folder_never_runs_without_trust(models: dict, tmp_path: Path) -> None:
    root = write_task_vectors(tmp_path / "ckpt", models["quick_gelu"])
    marker = tmp_path / "pwned"
    torch.save(Hostile(marker), root / "ViT-T-8" / "zeroshot.pt")
    with pytest.raises(UntrustedPickleError):
        open_folder(root)
    with pytest.raises(UntrustedPickleError):
        open_files(root / "ViT-T-8" / "zeroshot.pt", {"MNIST": root / "ViT-T-8" / "MNIST" / "finetuned.pt"})
    assert not marker.exists()


# ---------------------------------------------------------------- clear errors


def test_empty_and_unknown_folders_name_the_supported_layouts(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is empty.*Supported layouts: tall_masks"):
        open_folder(tmp_path)
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"not in a supported checkpoint layout \(found: weights.npz\).*plain"):
        detect_layout(tmp_path)
    with pytest.raises(CheckpointError, match="not a folder"):
        detect_layout(tmp_path / "weights.npz")
    with pytest.raises(IsoscopeError, match="neither a zoo name"):
        load_zoo(str(tmp_path / "nowhere"))


def test_several_models_under_one_root_ask_which(models: dict, tmp_path: Path) -> None:
    write_tall_masks(tmp_path, models["quick_gelu"])
    (tmp_path / "ViT-T-8").rename(tmp_path / "A")
    write_tall_masks(tmp_path, models["quick_gelu"])
    with pytest.raises(CheckpointError, match="several models \\(A, ViT-T-8\\)"):
        open_folder(tmp_path)
    assert detect_layout(tmp_path / "A") == "tall_masks"


def test_mismatched_shapes_and_keys_are_named(models: dict, tmp_path: Path) -> None:
    root = write_plain(tmp_path / "shape", models["gelu"])
    other = VisionTransformer(image_size=32, patch_size=8, width=WIDTH, layers=2, heads=2, mlp_ratio=2.0, output_dim=OUT)
    save_safetensors(other.state_dict(), root / "SVHN.safetensors")
    with pytest.raises(MismatchError, match=r"task SVHN.*shape differs: transformer.resblocks.0.mlp.c_fc.weight \(256, 64\) vs \(128, 64\)"):
        open_folder(root)
    root = write_plain(tmp_path / "keys", models["gelu"])
    state = models["gelu"]["DTD"].state_dict()
    del state["ln_post.bias"]
    save_safetensors(state, root / "DTD.safetensors")
    with pytest.raises(MismatchError, match="missing keys: ln_post.bias"):
        open_folder(root)


def test_non_finite_weights_are_reported_by_key(models: dict, tmp_path: Path) -> None:
    root = write_plain(tmp_path, models["gelu"])
    state = {k: v.clone() for k, v in models["gelu"]["MNIST"].state_dict().items()}
    state["conv1.weight"][0, 0, 0, 0] = math.nan
    save_safetensors(state, root / "MNIST.safetensors")
    zoo = open_folder(root)
    lazy = zoo.finetuned("MNIST")  # opening reads headers only; the bad tensor is named when read
    with pytest.raises(NonFiniteError, match="MNIST.safetensors: tensor 'conv1.weight' holds 1 NaN"):
        lazy["conv1.weight"]


def test_heads_and_data_gaps_are_listed(models: dict, data: Path, tmp_path: Path) -> None:
    root = write_plain(tmp_path / "ckpt", models["gelu"])
    (root / "head_DTD.safetensors").unlink()
    save_safetensors({"weight": torch.zeros(3, OUT + 1)}, root / "head_SVHN.safetensors")
    partial = write_data(tmp_path / "data", tasks=("MNIST", "SVHN"))
    zoo = open_folder(root, data=partial)
    assert not zoo.has_data
    assert zoo.missing("test") == [f"no head file for task DTD (head_DTD.safetensors with weight (classes, {OUT}) "
                                   f"in {root}) and no text tower in θ0 to build one",
                                   f"no test data for DTD in {partial} (ImageFolder: expected images in "
                                   f"{partial / 'DTD'}/<split>/<class>/)"]
    with pytest.raises(IsoscopeError, match="cannot compute accuracy: no head file for task DTD"):
        zoo.evaluate(zoo.pretrained(), "DTD")
    with pytest.raises(CheckpointError, match=r"head shapes weight \(3, 33\) do not fit 32-dimensional"):
        zoo.evaluate(zoo.pretrained(), "SVHN")
    assert 0.0 <= zoo.evaluate(zoo.pretrained(), "MNIST") <= 1.0


def test_explicit_file_lists(models: dict, data: Path, tmp_path: Path) -> None:
    root = write_plain(tmp_path, models["gelu"])
    zoo = open_files(root / "pretrained.safetensors", {"a": root / "MNIST.safetensors"},
                     heads={"a": root / "head_MNIST.safetensors"})
    assert zoo.tasks == ["a"] and zoo.config.act == "gelu" and zoo.config.heads == 1
    assert torch.equal(zoo.finetuned("a")["proj"], models["gelu"]["MNIST"].proj)


def test_served_mode_refuses_folders_and_symlinks_outside_the_roots(models: dict, data: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from merging.errors import PathNotAllowedError
    from merging.paths import ALLOWED_ROOTS_ENV

    served, outside = tmp_path / "served", tmp_path / "outside"
    root = write_plain(served / "ckpt", models["gelu"])
    write_plain(outside, models["gelu"])
    monkeypatch.setenv(ALLOWED_ROOTS_ENV, str(served))
    assert open_folder(root).tasks == sorted(TASKS)
    with pytest.raises(PathNotAllowedError):
        open_folder(outside)
    with pytest.raises(PathNotAllowedError):
        open_folder(root, data=data)  # the data folder lies outside too
    (root / "SVHN.safetensors").unlink()
    (root / "SVHN.safetensors").symlink_to(outside / "SVHN.safetensors")
    with pytest.raises(PathNotAllowedError):
        open_folder(root)


def test_hf_config_and_isoscope_json_set_activation_heads_and_preprocessing(models: dict, tmp_path: Path) -> None:
    root = write_hf(tmp_path, models["quick_gelu"])
    config = hf_config(heads=4)
    config["vision_config"]["hidden_act"] = "gelu"
    (root / "clip-vit-tiny" / "config.json").write_text(json.dumps(config))
    (root / "clip-vit-tiny" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.2, 0.3, 0.4]}))
    zoo = open_folder(root)
    assert (zoo.config.act, zoo.config.heads) == ("gelu", 4)
    assert (zoo.preprocess.mean, zoo.preprocess.std) == ((0.5, 0.5, 0.5), (0.2, 0.3, 0.4))
    (root / "isoscope.json").write_text(json.dumps({"act": "quick_gelu", "std": [1, 1, 1]}))
    zoo = open_folder(root)
    assert (zoo.config.act, zoo.config.heads, zoo.preprocess.std) == ("quick_gelu", 4, (1, 1, 1))
    (root / "isoscope.json").write_text(json.dumps({"activation": "relu"}))
    with pytest.raises(CheckpointError, match=r"isoscope.json: unknown or mistyped entries \['activation'\]"):
        open_folder(root)
    (root / "isoscope.json").write_text(json.dumps(["act", "gelu"]))  # one JSON reader, one message
    with pytest.raises(CheckpointError, match="isoscope.json: expected a JSON object, found list"):
        open_folder(root)
    config["vision_config"]["hidden_act"] = "relu"
    (root / "isoscope.json").unlink()
    (root / "clip-vit-tiny" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="hidden_act 'relu' is not supported"):
        open_folder(root)
    (root / "clip-vit-tiny" / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json: expected a JSON object, found list"):
        open_folder(root)
