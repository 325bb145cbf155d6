"""Zero-shot classification heads from a CLIP text tower (Radford et al. 2021, "Learning
Transferable Visual Models From Natural Language Supervision", §3.1.4 prompt ensembling).

For every class c and prompt template t, the text tower embeds t(c); the head's row for c is the
mean of the L2-normalised embeddings over templates, normalised again (CLIP's ensemble in
embedding space). The zoo scores logits = W·f̂ with f̂ the normalised image feature, so a row
scale (CLIP's logit scale) would not change a prediction and is left out.

The text tower is read from θ0 when it holds one, under open_clip ``TextTransformer`` names:
an open_clip ``CLIP`` state dict (``token_embedding.weight``, ``positional_embedding``,
``transformer.resblocks.*``, ``ln_final.*``, ``text_projection``, with any prefix such as
``model.``: TALL-masks' and task_vectors' files when the text transformer was kept), or a
Hugging Face ``CLIPModel`` (``text_model.*`` + ``text_projection.weight``, mapped by
``zoo.hf.hf_text_plan``). Text is tokenised by open_clip's own BPE tokenizer, which ships in
the package (nothing is downloaded).

Templates: per dataset where CLIP's authors published a set for it (the wording of prompts in
the CLIP paper's appendix and its released prompt lists), a generic set otherwise. For the
paper's eight tasks (MNIST, SVHN, EuroSAT, DTD, SUN397, RESISC45, GTSRB, Cars) they are the full
sets the merging papers' code (task_vectors, TALL-masks, iso-merging) builds its heads with, so a
head built here matches theirs given the same class names (``zoo.authors_data``); for the other
datasets, a short selection.

Public API: ``TEMPLATES``, ``GENERIC_TEMPLATES``, ``templates_for(task)``, ``text_plan(keys)``,
``zero_shot_head(get, plan, classes, templates, act)`` -> (C, D) weight.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import torch

from merging.errors import CheckpointError
from zoo.data import task_key
from zoo.hf import Plan, apply_recipe, hf_text_plan

log = logging.getLogger(__name__)

GENERIC_TEMPLATES = ("a photo of a {}.", "a bad photo of a {}.", "a photo of the large {}.",
                     "a photo of the small {}.", "a cropped photo of a {}.", "itap of a {}.")
# Lower-cased dataset name (without a trailing "val") -> templates.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "mnist": ('a photo of the number: "{}".',),
    "svhn": ('a photo of the number: "{}".',),
    "cifar10": ("a photo of a {}.", "a blurry photo of a {}.", "a low contrast photo of a {}."),
    "cifar100": ("a photo of a {}.", "a blurry photo of a {}.", "a low contrast photo of a {}."),
    "dtd": tuple(f"a photo of {article} {{}} {noun}." for article in ("a", "the")
                 for noun in ("texture", "pattern", "thing", "object")),
    "eurosat": ("a centered satellite photo of {}.", "a centered satellite photo of a {}.",
                "a centered satellite photo of the {}."),
    "gtsrb": ('a zoomed in photo of a "{}" traffic sign.', 'a centered photo of a "{}" traffic sign.',
              'a close up photo of a "{}" traffic sign.'),
    "resisc45": tuple(f"{source} {kind} of {article}{{}}." for article in ("", "a ", "the ")
                      for kind in ("imagery", "photo", "view") for source in ("satellite", "aerial")),
    "sun397": ("a photo of a {}.", "a photo of the {}."),
    "cars": ("a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!",
             *(f"a photo of my {state} {{}}." for state in ("dirty", "clean", "new", "old"))),
    "fer2013": ("a photo of a {} looking face.", "a photo of a face showing the emotion: {}."),
    "flowers102": ("a photo of a {}, a type of flower.",),
    "pcam": ("this is a photo of {}.",),
    "stl10": ("a photo of a {}.", "a photo of the {}."),
}
_OPEN_CLIP_TEXT = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias",
                   "text_projection")


def templates_for(task: str) -> tuple[str, ...]:
    """The templates of a dataset (``MNISTVal``, ``mnist``, ``stanford_cars`` and ``Cars`` alike,
    names compared by ``zoo.data.task_key``), generic ones otherwise."""
    return TEMPLATES.get(task_key(task), GENERIC_TEMPLATES)


def _open_clip_text_plan(keys: set[str]) -> Plan | None:
    """Copy plan of an open_clip CLIP text tower under any prefix (e.g. ``model.``)."""
    prefix = next((k[: -len("token_embedding.weight")] for k in keys if k.endswith("token_embedding.weight")), None)
    if prefix is None or not all(prefix + k in keys for k in _OPEN_CLIP_TEXT):
        return None
    block = prefix + "transformer.resblocks."
    blocks = sorted(k for k in keys if k.startswith(block))
    if not blocks:
        return None
    return {k[len(prefix):]: ("copy", (k,)) for k in [*(prefix + n for n in _OPEN_CLIP_TEXT), *blocks]}


def text_plan(keys: Iterable[str]) -> Plan | None:
    """open_clip text-tower name -> recipe, for an open_clip or Hugging Face full CLIP state
    dict; None when the keys hold no complete text tower (e.g. a vision-only save)."""
    keys = set(keys)
    return _open_clip_text_plan(keys) or hf_text_plan(keys)


def _tower(state: Mapping[str, torch.Tensor], act: str) -> torch.nn.Module:
    """An open_clip ``TextTransformer`` shaped by ``state`` (heads: width / 64, as in CLIP)."""
    from open_clip.transformer import TextTransformer

    from zoo.model import ACTIVATIONS

    vocab, width = state["token_embedding.weight"].shape  # (V, W)
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks."))
    hidden = state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]  # (W·ratio, W)
    tower = TextTransformer(context_length=state["positional_embedding"].shape[0], vocab_size=vocab, width=width,
                            heads=max(1, width // 64), layers=layers, mlp_ratio=hidden / width,
                            output_dim=state["text_projection"].shape[1], act_layer=ACTIVATIONS[act])
    missing, unexpected = tower.load_state_dict(dict(state), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"text tower does not fit open_clip's TextTransformer "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return tower.eval()


def zero_shot_head(get: Callable[[str], torch.Tensor], plan: Plan, classes: list[str],
                   templates: tuple[str, ...], act: str) -> torch.Tensor:
    """The (C, D) weight of CLIP's zero-shot classifier for ``classes``."""
    from open_clip.tokenizer import SimpleTokenizer

    state = {key: apply_recipe(recipe, get).float() for key, recipe in plan.items()}
    tower = _tower(state, act)
    tokenizer = SimpleTokenizer(context_length=tower.context_length)
    if tower.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(f"the text tower has {tower.vocab_size} tokens, open_clip's tokenizer "
                              f"{tokenizer.vocab_size}: not a CLIP text tower")
    rows = []
    with torch.no_grad():
        for name in classes:
            features = tower(tokenizer([t.format(name) for t in templates]))  # (P, D)
            mean = torch.nn.functional.normalize(features, dim=-1).mean(dim=0)  # (D,)
            rows.append(torch.nn.functional.normalize(mean, dim=0))
    log.info("built a zero-shot head: %d classes x %d templates", len(classes), len(templates))
    return torch.stack(rows)  # (C, D)
