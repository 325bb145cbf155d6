"""Faithful tiny replicas of the public checkpoint releases, written by the tests.

- task_vectors (Ilharco et al.): ``torch.save`` of whole modules whose pickles name the authors'
  classes: ``src.modeling.ImageEncoder`` / ``ClassificationHead``, open_clip 2.0.2's
  ``open_clip.model.CLIP`` / ``VisualTransformer`` / ``Transformer`` / ``ResidualAttentionBlock``
  / ``QuickGELU`` / ``LayerNorm``, torchvision transforms. The stub classes exist only while the
  files are written (``authors_modules``): when a test reads them, ``src`` cannot be imported and
  ``open_clip.model`` has no ``VisualTransformer``, as on a user's machine.
- TALL-masks: ``ImageEncoder.state_dict()`` files (``model.visual.*`` plus the text-side keys),
  heads pickled as ``src.models.modeling.ClassificationHead``, no zero-shot file.
- FusionBench / Hugging Face: ``CLIPModel`` (base) and ``CLIPVisionModel`` folders with the key
  names transformers writes (4.x: ``vision_model.*``; 5.x vision-only saves: bare names), and
  the hub cache tree ``models--<org>--<name>/{blobs,refs,snapshots}`` with symlinked files.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import open_clip.model
import torch
from open_clip.transformer import QuickGELU, TextTransformer, VisionTransformer
from torchvision import transforms

from merging.io import save_safetensors
from zoo.hf import open_clip_to_hf

WIDTH, OUT, TEXT_WIDTH, CONTEXT, VOCAB = 64, 32, 32, 77, 49408


def _stub(module: str, name: str, base: type = torch.nn.Module) -> type:
    return type(name, (base,), {"__module__": module, "__qualname__": name})


STUBS = {
    ("src.modeling", "ImageEncoder"): _stub("src.modeling", "ImageEncoder"),
    ("src.modeling", "ClassificationHead"): _stub("src.modeling", "ClassificationHead", torch.nn.Linear),
    ("src.models.modeling", "ClassificationHead"): _stub("src.models.modeling", "ClassificationHead", torch.nn.Linear),
    **{("open_clip.model", n): _stub("open_clip.model", n, b) for n, b in (
        ("CLIP", torch.nn.Module), ("VisualTransformer", torch.nn.Module), ("Transformer", torch.nn.Module),
        ("ResidualAttentionBlock", torch.nn.Module), ("QuickGELU", torch.nn.Module), ("LayerNorm", torch.nn.LayerNorm))},
}


@contextmanager
def authors_modules() -> Iterator[None]:
    """The authors' module paths, importable only inside this block (pickle checks them on save)."""
    fake = {name: types.ModuleType(name) for name in ("src", "src.modeling", "src.models", "src.models.modeling")}
    saved = {n: getattr(open_clip.model, n) for module, n in STUBS if module == "open_clip.model"
             and hasattr(open_clip.model, n)}
    for (module, name), cls in STUBS.items():
        setattr(fake.get(module, open_clip.model), name, cls)
    sys.modules.update(fake)
    try:
        yield
    finally:
        for name in fake:
            sys.modules.pop(name, None)
        for module, name in STUBS:
            if module == "open_clip.model":
                delattr(open_clip.model, name)
        for name, value in saved.items():
            setattr(open_clip.model, name, value)


def _as(module: torch.nn.Module, module_path: str, name: str) -> torch.nn.Module:
    module.__class__ = STUBS[(module_path, name)]
    return module


def tower(seed: int) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(image_size=32, patch_size=8, width=WIDTH, layers=2, heads=1, mlp_ratio=4.0,
                             output_dim=OUT, act_layer=QuickGELU).eval()


def text_tower(seed: int) -> TextTransformer:
    torch.manual_seed(seed)
    return TextTransformer(context_length=CONTEXT, vocab_size=VOCAB, width=TEXT_WIDTH, heads=1, layers=1,
                           output_dim=OUT, act_layer=QuickGELU).eval()


def moved(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy with every tensor moved a little (a stand-in fine-tune)."""
    import copy

    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


def _restyle_visual(visual: VisionTransformer) -> torch.nn.Module:
    """open_clip 2.0.2 class names on a modern tower (same parameter names)."""
    import copy

    visual = copy.deepcopy(visual)
    for module in visual.modules():
        if isinstance(module, torch.nn.LayerNorm):
            _as(module, "open_clip.model", "LayerNorm")
        elif isinstance(module, QuickGELU):
            _as(module, "open_clip.model", "QuickGELU")
    for block in visual.transformer.resblocks:
        _as(block, "open_clip.model", "ResidualAttentionBlock")
    _as(visual.transformer, "open_clip.model", "Transformer")
    return _as(visual, "open_clip.model", "VisualTransformer")


def clip_module(visual: VisionTransformer, text: TextTransformer, keep_lang: bool) -> torch.nn.Module:
    """open_clip 2.0.2's ``CLIP``: the visual tower, the text-side parameters at top level."""
    import copy

    clip = STUBS[("open_clip.model", "CLIP")]()
    clip.visual = _restyle_visual(visual)
    text = copy.deepcopy(text)
    if keep_lang:
        clip.transformer = _as(text.transformer, "open_clip.model", "Transformer")
    clip.vocab_size = VOCAB
    clip.token_embedding = text.token_embedding
    clip.positional_embedding = text.positional_embedding
    clip.ln_final = _as(text.ln_final, "open_clip.model", "LayerNorm")
    clip.text_projection = text.text_projection
    clip.logit_scale = torch.nn.Parameter(torch.tensor(4.6052))
    clip.register_buffer("attn_mask", text.attn_mask.clone(), persistent=False)
    return clip


def image_encoder(visual: VisionTransformer, text: TextTransformer, keep_lang: bool = False,
                  payload: object = None) -> torch.nn.Module:
    """task_vectors' ``ImageEncoder``: ``model`` (CLIP), preprocessing transforms, cache_dir."""
    encoder = STUBS[("src.modeling", "ImageEncoder")]()
    encoder.model = clip_module(visual, text, keep_lang)
    encoder.train_preprocess = transforms.Compose([
        transforms.RandomResizedCrop(32, interpolation=transforms.InterpolationMode.BICUBIC), transforms.ToTensor()])
    encoder.val_preprocess = transforms.Compose([
        transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(32),
        transforms.ToTensor(), transforms.Normalize((0.48, 0.46, 0.41), (0.27, 0.26, 0.28))])
    encoder.cache_dir = None
    if payload is not None:
        encoder.extra = payload  # an attribute the reader never needs
    return encoder


def classification_head(weight: torch.Tensor, bias: torch.Tensor, module: str = "src.modeling") -> torch.nn.Module:
    head = STUBS[(module, "ClassificationHead")](weight.shape[1], weight.shape[0])
    head.weight.data, head.bias.data = weight.clone(), bias.clone()
    head.normalize = True
    return head


def random_head(seed: int, classes: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"weight": torch.randn(classes, OUT, generator=gen), "bias": torch.randn(classes, generator=gen)}


# ---------------------------------------------------------------- releases


def write_task_vectors(root: Path, models: dict[str, VisionTransformer], text: TextTransformer, legacy: bool = False,
                       payload: object = None) -> Path:
    """``<model>/zeroshot.pt``, ``<model>/<Task>/finetuned.pt``, ``<model>/head_<Task>.pt``."""
    model_dir = root / "ViT-T-8"
    save = {"_use_new_zipfile_serialization": not legacy}
    with authors_modules():
        for i, (task, visual) in enumerate(models.items()):
            path = model_dir / "zeroshot.pt" if not task else model_dir / task / "finetuned.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(image_encoder(visual, text, payload=payload if i == 1 else None), path, **save)
            if task:
                torch.save(classification_head(**random_head(10 + i)), model_dir / f"head_{task}.pt", **save)
    return root


def encoder_state(visual: VisionTransformer, text: TextTransformer, keep_lang: bool) -> dict[str, torch.Tensor]:
    """TALL-masks' ``ImageEncoder.state_dict()``: ``model.visual.*`` and the text-side keys."""
    encoder = image_encoder(visual, text, keep_lang)
    return {k: v.clone() for k, v in encoder.state_dict().items()}


def write_tall_masks(model_dir: Path, models: dict[str, VisionTransformer], text: TextTransformer) -> Path:
    """``<Task>Val/nonlinear_finetuned.pt`` state dicts, ``head_<Task>Val.pt`` pickled heads, no θ0."""
    with authors_modules():
        for i, (task, visual) in enumerate((t, v) for t, v in models.items() if t):
            (model_dir / f"{task}Val").mkdir(parents=True)
            torch.save(encoder_state(visual, text, keep_lang=False), model_dir / f"{task}Val" / "nonlinear_finetuned.pt")
            torch.save(classification_head(**random_head(11 + i), module="src.models.modeling"),
                       model_dir / f"head_{task}Val.pt")
    return model_dir


# ---------------------------------------------------------------- Hugging Face


def text_to_hf(text: TextTransformer) -> dict[str, torch.Tensor]:
    """A CLIPModel's ``text_model.*`` + ``text_projection.weight`` from an open_clip text tower."""
    s = text.state_dict()
    out = {"text_model.embeddings.token_embedding.weight": s["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": s["positional_embedding"],
           "text_model.embeddings.position_ids": torch.arange(CONTEXT)[None],
           "text_model.final_layer_norm.weight": s["ln_final.weight"],
           "text_model.final_layer_norm.bias": s["ln_final.bias"],
           "text_projection.weight": s["text_projection"].T.contiguous()}
    for key, value in open_clip_to_hf({k: v for k, v in s.items() if k.startswith("transformer.")},
                                      prefix="text_model.").items():
        out[key] = value
    return out


def hf_config(architecture: str) -> dict:
    vision = {"hidden_act": "quick_gelu", "hidden_size": WIDTH, "image_size": 32, "intermediate_size": 4 * WIDTH,
              "num_attention_heads": 1, "num_hidden_layers": 2, "patch_size": 8, "projection_dim": OUT}
    if architecture == "CLIPModel":
        return {"architectures": [architecture], "vision_config": vision, "projection_dim": OUT,
                "text_config": {"hidden_size": TEXT_WIDTH, "num_hidden_layers": 1, "vocab_size": VOCAB}}
    return {"architectures": [architecture], **vision}


def hf_states(models: dict[str, VisionTransformer], text: TextTransformer, bare: bool) -> dict[str, dict]:
    """name -> state: the base as a CLIPModel, each task a CLIPVisionModel (4.x nested names, or
    bare names as transformers 5 saves a vision-only model)."""
    out = {}
    for task, visual in models.items():
        state = open_clip_to_hf(visual.state_dict(), prefix="vision_model.")
        if task:
            del state["visual_projection.weight"]
            if bare:
                state = {k.removeprefix("vision_model."): v for k, v in state.items()}
        else:
            state = {**state, **text_to_hf(text), "logit_scale": torch.tensor(4.6052)}
        out[task] = state
    return out


def write_hf_hub(hub: Path, models: dict[str, VisionTransformer], text: TextTransformer, bare: bool) -> Path:
    """``hub/models--<org>--<name>/{blobs/<sha>, refs/main, snapshots/<rev>/<file> -> ../../blobs/<sha>}``."""
    for task, state in hf_states(models, text, bare).items():
        name = "models--openai--clip-vit-tiny" if not task else f"models--tanganke--clip-vit-tiny_{task.lower()}"
        repo, rev = hub / name, hashlib.sha1(name.encode()).hexdigest()
        (repo / "blobs").mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(rev)
        snapshot = repo / "snapshots" / rev
        snapshot.mkdir(parents=True)
        tmp = repo / "model.tmp"
        save_safetensors(state, tmp)
        files = {"model.safetensors": tmp.read_bytes(),
                 "config.json": json.dumps(hf_config("CLIPVisionModel" if task else "CLIPModel")).encode()}
        tmp.unlink()
        for file, data in files.items():
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snapshot / file).symlink_to(Path("../..") / "blobs" / blob.name)
    return hub
