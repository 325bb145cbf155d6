"""The embedded digits zoo: deterministic tiny builds, frozen heads, disjoint splits, evaluation
against a direct forward pass, cache reuse and resumption, and the shipped asset's fingerprint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from merging.io import load_state_dict
from merging.paths import CACHE_ENV
from zoo import digits as D
from zoo import digits_data as dd
from zoo import train
from zoo.model import VitConfig, build_encoder, load_encoder

TINY = "digits-tiny"


@pytest.fixture(scope="module")
def tiny() -> D.DigitsZoo:
    return zoo.load_zoo(TINY, device="cpu")


def _forbid_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("trained although the cache holds this step")

    monkeypatch.setattr(train, "pretrain", boom)
    monkeypatch.setattr(train, "finetune", boom)


@pytest.mark.slow
def test_tiny_build_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two builds from empty caches in one process state are bit for bit equal (digits-tiny's recipe
    fixes no thread count, so the session's own build, made wherever a test first needed it, is not
    the reference)."""
    builds = []
    for name in ("first", "second"):
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / name))  # an empty cache: build everything
        builds.append(zoo.load_zoo(TINY, device="cpu"))
    tiny, again = builds
    assert again.path != tiny.path and again.fingerprint == tiny.fingerprint
    assert load_state_dict(again.path).keys() == load_state_dict(tiny.path).keys()
    for key, value in load_state_dict(tiny.path).items():
        assert torch.equal(value, load_state_dict(again.path)[key]), key
    task = tiny.tasks[0]
    assert again.evaluate_tasks(again.finetuned(task)) == tiny.evaluate_tasks(tiny.finetuned(task))


def test_fine_tuning_moves_the_encoder_not_the_heads() -> None:
    recipe = D.RECIPES[TINY]
    encoder = build_encoder(VitConfig(**recipe["model"]))
    before = train.state_of(encoder)
    head = torch.nn.functional.normalize(torch.randn(10, recipe["model"]["output_dim"]), dim=-1)
    head_before = head.clone()
    images, labels = D.task_split(recipe, "tinted", "train")
    cfg = train.FinetuneConfig(steps=3, batch=16, lr=1e-3)
    train.finetune(encoder, images, labels, head, cfg, seed=0, preprocess=dd.preprocess)
    assert torch.equal(head, head_before) and not head.requires_grad
    after = train.state_of(encoder)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_heads_are_the_frozen_prompt_embeddings_of_theta0(tiny: D.DigitsZoo) -> None:
    emb = D.digit_embeddings(tiny.pretrained(), tiny.recipe)  # (10, D)
    torch.testing.assert_close(tiny.heads["inverted"], emb)
    assert all(torch.equal(tiny.heads[t], tiny.heads["inverted"]) for t in ("tinted", "rotated", "noisy"))
    even = torch.nn.functional.normalize(emb[[0, 2, 4, 6, 8]].mean(0), dim=0)
    torch.testing.assert_close(tiny.heads["parity"][0], even)


@pytest.mark.parametrize("name", sorted(D.RECIPES))
def test_splits_are_disjoint_and_sized(name: str) -> None:
    sizes = D.RECIPES[name]["data"]
    parts = dd.split_indices(sizes, D.RECIPES[name]["seed"])
    sets = {k: set(v.tolist()) for k, v in parts.items()}
    assert {k: len(v) for k, v in sets.items()} == {k: sizes[k] for k in sets}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"])
    assert not (sets["val"] & sets["test"])


def test_labels_follow_the_label_maps() -> None:
    digits = torch.arange(10)
    assert dd.TASKS["parity"].labels(digits).tolist() == [0, 1] * 5
    assert dd.TASKS["magnitude"].labels(digits).tolist() == [0] * 5 + [1] * 5
    assert dd.TASKS["rotated"].labels(digits).tolist() == list(range(10))


def test_evaluate_agrees_with_a_direct_forward_pass(tiny: D.DigitsZoo) -> None:
    for task in ("corner", "parity"):
        state = tiny.finetuned(task)
        images, labels = D.task_split(tiny.recipe, task, "test")
        encoder = build_encoder(tiny.config)
        encoder.load_state_dict(state)
        with torch.no_grad():
            feats = encoder.eval()((images - 0.5) / 0.25)  # (N, D)
        cos = torch.nn.functional.normalize(feats, dim=-1) @ torch.nn.functional.normalize(tiny.heads[task], dim=-1).T
        expected = float((cos.argmax(-1) == labels).float().mean())
        assert tiny.evaluate(state, task, "test") == pytest.approx(expected, abs=1e-6)
        assert tiny.evaluate_tasks(state, [task, "noisy"], "test")[task] == pytest.approx(expected, abs=1e-6)


def test_finetuned_is_pretrained_plus_task_vector(tiny: D.DigitsZoo) -> None:
    theta0, tau = tiny.pretrained(), tiny.task_vector("mirrored")
    key = "transformer.resblocks.0.attn.in_proj_weight"
    assert torch.equal(tiny.finetuned("mirrored")[key], theta0[key] + tau[key])
    assert float(tau[key].abs().max()) > 0


def test_task_info_and_examples(tiny: D.DigitsZoo) -> None:
    info = tiny.task_info("parity")
    assert info["num_classes"] == 2 and info["class_names"] == ["even", "odd"]
    assert info["sizes"] == D.RECIPES[TINY]["data"]
    pics = tiny.examples("tinted", 5)
    assert pics.shape == (5, 32, 32, 3) and pics.dtype == np.uint8
    spec = dd.TASKS["tinted"]  # red ink on green paper: the corners are paper, the brightest red is ink
    paper = np.round(np.array(spec.paper) * 255)
    assert np.abs(pics[:, 0, 0].astype(float) - paper).max() <= 1
    reddest = pics.reshape(-1, 3)[np.argmax(pics.reshape(-1, 3)[:, 0].astype(int) - pics.reshape(-1, 3)[:, 1])]
    assert np.abs(reddest.astype(float) - np.round(np.array(spec.ink) * 255)).max() <= 2
    _, labels = D.task_split(tiny.recipe, "tinted", "test")
    assert not np.array_equal(pics[0], pics[1]) or int(labels[0]) == int(labels[1])  # different digits differ
    assert tiny.task_info("rotated")["num_classes"] == 10


def test_second_load_uses_the_cache(tiny: D.DigitsZoo, monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_training(monkeypatch)
    again = zoo.load_zoo(TINY, device="cpu")
    assert again.path == tiny.path


@pytest.mark.slow
def test_interrupted_build_resumes_from_finished_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    real, calls = train.finetune, []

    class Killed(Exception):
        pass

    def dies_on_third(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        real(*args, **kwargs)

    monkeypatch.setattr(train, "finetune", dies_on_third)
    with pytest.raises(Killed):
        zoo.load_zoo(TINY, device="cpu")
    assert not list((tmp_path / "zoo").glob("*.tmp")) and not list((tmp_path / "zoo").glob(".*"))
    calls.clear()
    monkeypatch.setattr(train, "finetune", lambda *a, **k: (calls.append(1), real(*a, **k)))
    monkeypatch.setattr(train, "pretrain", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    zoo.load_zoo(TINY, device="cpu")
    assert len(calls) == len(D.RECIPES[TINY]["tasks"]) - 2  # the two finished tasks came from the cache


def test_shipped_asset_matches_the_recipe() -> None:
    path = D.ASSETS / "digits.safetensors"
    assert path.is_file(), "assets/zoo/digits.safetensors is missing: run python -m zoo build --out assets/zoo"
    assert path.stat().st_size <= 20 * 2**20
    assert D.read_metadata(path)["fingerprint"] == D.fingerprint_of(D.RECIPES["digits"])
    assert D.zoo_file("digits") == path


def test_unknown_names_raise_readable_errors(tiny: D.DigitsZoo) -> None:
    from merging.errors import IsoscopeError

    with pytest.raises(IsoscopeError, match="unknown task"):
        tiny.evaluate(tiny.pretrained(), "cifar")
    with pytest.raises(IsoscopeError):
        zoo.load_zoo("no-such-zoo")


def test_a_task_override_retrains_that_task_alone(tiny: D.DigitsZoo, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``task_finetune`` changes one task's settings: only that task is fine-tuned again (the
    others keep their cache keys) and it trains with its own steps."""
    recipe = {**D.RECIPES[TINY], "task_finetune": {"parity": {"steps": 3, "lr": 1e-3}}}
    assert train.finetune_config(recipe, "parity").steps == 3
    assert train.finetune_config(recipe, "tinted") == train.finetune_config(D.RECIPES[TINY], "tinted")
    real, trained = train.finetune, []

    def recording(encoder, images, labels, head, cfg, *rest, **kwargs):  # noqa: ANN001, ANN202
        trained.append((cfg.steps, cfg.lr))
        return real(encoder, images, labels, head, cfg, *rest, **kwargs)

    monkeypatch.setattr(train, "pretrain", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    monkeypatch.setattr(train, "finetune", recording)
    D.build(recipe, tmp_path / "variant.safetensors")
    assert trained == [(3, 1e-3)]


def test_a_palette_prompt_is_the_task_rendered_upright_and_centred() -> None:
    digits = dd.base_digits()[0][:12]  # (12, 8, 8)
    gen = torch.Generator().manual_seed(0)
    for name in ("inverted", "tinted", "parity"):  # these tasks draw the digit upright and centred
        assert torch.equal(dd.TASKS[name].prompt(digits), dd.TASKS[name].render(digits, gen)), name
    rotated = dd.TASKS["rotated"]
    assert torch.equal(torch.rot90(rotated.prompt(digits), 1, dims=(-2, -1)), rotated.render(digits, gen))
    noisy = dd.TASKS["noisy"]
    assert not torch.equal(noisy.prompt(digits), noisy.render(digits, gen))  # the noise is not in the prompt
    assert torch.equal(noisy.prompt(digits)[:, :, 0, 0], torch.tensor([noisy.paper] * 12))


def test_palette_prompt_heads_are_a_weighted_prompt_ensemble(tiny: D.DigitsZoo) -> None:
    """Each task's digit embeddings are normalize((1 − w)·neutral + w·palette), the palette
    embeddings computed here by a plain forward pass over the task's prompt renderings."""
    recipe, theta0 = {**D.RECIPES[TINY], "palette_prompt": 0.4}, tiny.pretrained()
    encoder = build_encoder(tiny.config)
    encoder.load_state_dict(theta0)
    images, digits = D._train_digits(recipe)
    neutral = D.digit_embeddings(theta0, recipe)  # (10, D)
    got = D.head_embeddings(theta0, recipe)
    for task in ("tinted", "rotated", "parity"):
        with torch.no_grad():
            feats = torch.nn.functional.normalize(encoder.eval()(dd.preprocess(dd.TASKS[task].prompt(images))), dim=-1)
        palette = torch.nn.functional.normalize(torch.stack([feats[digits == d].mean(0) for d in range(10)]), dim=-1)
        expected = torch.nn.functional.normalize(0.6 * neutral + 0.4 * palette, dim=-1)
        torch.testing.assert_close(got[task], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got["tinted"], got["rotated"], atol=1e-3)  # heads now differ by task
    shared = D.head_embeddings(theta0, D.RECIPES[TINY])
    assert all(torch.equal(shared[t], neutral) for t in tiny.tasks)


def test_a_palette_prompt_retrains_every_task_against_its_own_head(tiny: D.DigitsZoo, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The heads enter the fine-tuning cache key: a recipe that only adds ``palette_prompt``
    keeps θ0 but fine-tunes every task again, each against the head the built zoo stores."""
    recipe = {**D.RECIPES[TINY], "palette_prompt": 0.5}
    real, heads = train.finetune, []

    def recording(encoder, images, labels, head, cfg, *rest, **kwargs):  # noqa: ANN001, ANN202
        heads.append(head.clone())
        return real(encoder, images, labels, head, cfg, *rest, **kwargs)

    monkeypatch.setattr(train, "pretrain", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    monkeypatch.setattr(train, "finetune", recording)
    built = D.DigitsZoo(D.build(recipe, tmp_path / "palette.safetensors"))
    assert len(heads) == len(recipe["tasks"])
    for task, head in zip(recipe["tasks"], heads):
        torch.testing.assert_close(built.heads[task], head)
    assert not torch.allclose(built.heads["tinted"], tiny.heads["tinted"], atol=1e-3)


def test_pretraining_pools_only_the_listed_domains(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = D.RECIPES[TINY]
    seen: list[str] = []
    real = D.task_split
    monkeypatch.setattr(D, "task_split", lambda r, task, split: (seen.append(task), real(r, task, split))[1])
    D._domain_views(recipe, train.PretrainConfig(steps=1, batch=4, lr=1e-3, domains=("tinted", "noisy")))
    assert seen == ["tinted", "noisy"]
    seen.clear()
    D._domain_views(recipe, train.pretrain_config(recipe))
    assert seen == list(recipe["tasks"])


def _attention_ops(kernel: str | None) -> set[str]:
    """The aten attention ops a forward and backward pass of the tiny encoder runs under ``kernel``."""
    from torch.profiler import ProfilerActivity, profile

    recipe = D.RECIPES[TINY]
    encoder = build_encoder(VitConfig(**recipe["model"])).train()
    images = dd.preprocess(D.task_split(recipe, "tinted", "train")[0][:8])
    with train.attention_kernel(kernel), profile(activities=[ProfilerActivity.CPU]) as prof:
        encoder(images).sum().backward()
    return {e.key for e in prof.key_averages() if "attention" in e.key and e.key.startswith("aten::")}


def test_the_recipe_chooses_the_attention_kernel() -> None:
    """"math" runs attention written out (no flash kernel in forward or backward), "flash" (and no
    choice) the CPU flash kernel; the choice enters the fingerprint (the weights depend on it), and an
    unknown name is refused."""
    assert not any("flash" in op for op in _attention_ops("math"))
    assert any("flash" in op for op in _attention_ops("flash"))
    assert _attention_ops(None) == _attention_ops("flash")  # a recipe without the key: flash, pinned
    recipe = D.RECIPES[TINY]
    assert D._pretrain_part({**recipe, "attention": "math"}) != D._pretrain_part(recipe)
    with pytest.raises(ValueError, match="unknown attention kernel"):
        with train.attention_kernel("fast"):
            pass
