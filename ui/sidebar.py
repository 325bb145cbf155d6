"""The shared sidebar: which zoo, which device, which method (with one widget per parameter of
its registry schema) and how α is chosen. Returns a ``Selection`` that every page reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from merging.device import available_devices
from merging.errors import IsoscopeError
from merging.paths import allowed_path
from merging.registry import Method, Param, all_methods
from ui.core import errors_in_place, progress_bar, show_error
from ui.models import loaded_zoo
from ui.state import Selection, default_method, default_zoo_spec, key, store_selection
from zoo.folders import convert_folder
from zoo.layouts import detect_layout, find_layout

SOURCES = {"Embedded digits zoo": "embedded", "Folder of checkpoints": "folder"}
ALPHA_MODES = {"Best on validation": "validation", "Fixed (slider)": "slider"}
ALPHA_RANGE = (0.1, 3.0, 0.1)
LAYOUTS_HELP = ("Supported layouts: TALL-masks/TSV (`<Task>Val/nonlinear_finetuned.pt`, also its Hugging Face "
                "copy `single_task/<model>/`), task_vectors (`<Task>/finetuned.pt`, pickled modules read without "
                "running code), Hugging Face CLIPVisionModel folders or a hub cache (`hub/models--<org>--<name>`), "
                "or plain files (one pretrained + one per task).")
DATA_HELP = ("Detected: the authors' data location (task_vectors / TALL-masks / iso-merging `--data-location`: "
             "`MNIST/raw`, `svhn/`, `EuroSAT_splits/`, `dtd/`, `sun397/`, `resisc45/`, `gtsrb/`, `stanford_cars/`), "
             "Hugging Face datasets (a hub cache with `datasets--<org>--<task>`, or `save_to_disk` folders), or one "
             "folder per task, `<data>/<Task>/{val,test}/<class>/<image>`. Without it, only the weight-space views work.")
BUDGET_HELP = ("Quick mode for CPUs: score a stratified sample (fixed seed) of at most this many images per task and "
               "split; accuracies then show their binomial standard error. 0 scores every image.")
PRETRAINED_HELP = ("θ0 for a release without a zero-shot model (TALL-masks): a checkpoint file of the pretrained "
                   "CLIP. Left empty, OpenAI's weights are taken from open_clip's local cache when it holds them.")


def _checked_path(text: str, label: str, want_file: bool = False) -> str | None:
    """A user-typed folder (or file) after the served-mode policy (merging.paths.allowed_path), or None."""
    text = text.strip()
    if not text:
        return None
    try:
        path = Path(allowed_path(text))
    except IsoscopeError as err:
        show_error(err)
        return None
    kind, exists = ("file", path.is_file()) if want_file else ("folder", path.is_dir())
    if not exists:
        st.error(f"**{label}: {path} is not a {kind}.** Type the path of an existing {kind}.", icon=":material/error:")
        return None
    return str(path)


def _zoo_source() -> tuple[str | None, str | None, bool, bool, str | None, int | None]:
    """(zoo spec, data folder, trust pickles, embedded?, θ0 file, evaluation budget) from the zoo section."""
    source = SOURCES[st.radio("Model zoo", list(SOURCES), key=key("zoo_source"),
                              help="The embedded zoo is built from scikit-learn's handwritten digits: "
                                   "no download, no GPU.")]
    if source == "embedded":
        return default_zoo_spec(), None, False, True, None, None
    converted = st.session_state.pop(key("zoo_path_next"), None)  # set by _offer_conversion
    if converted:
        st.session_state[key("zoo_path")] = converted  # before the text input exists in this run
    folder = _checked_path(st.text_input("Checkpoint folder", key=key("zoo_path"), help=LAYOUTS_HELP,
                                         placeholder="/path/to/checkpoints"), "Checkpoint folder")
    data = _checked_path(st.text_input("Evaluation data folder (optional)", key=key("data_path"), help=DATA_HELP),
                         "Data folder")
    budget = int(st.number_input("Evaluation budget (images per task and split)", min_value=0, value=0, step=100,
                                 key=key("max_images"), help=BUDGET_HELP)) or None
    pretrained = _checked_path(st.text_input("Pretrained model file (optional)", key=key("pretrained_path"),
                                             help=PRETRAINED_HELP), "Pretrained model file", want_file=True)
    trust = st.checkbox("Trust these files", key=key("trust_pickle"),
                        help="Pickled modules are read without running code. A pickle that reader cannot "
                             "interpret would run code when loaded: tick only for files you made or trust.")
    if folder:
        _show_layout(folder)
        _show_notes(folder, data, trust, pretrained, budget)
        _offer_conversion(folder, trust, pretrained)
    return folder, data, trust, False, pretrained, budget


def _show_layout(folder: str) -> None:
    with errors_in_place(stop=False):
        st.caption(f"Detected layout: **{detect_layout(folder)}**")


def _show_notes(folder: str, data: str | None, trust: bool, pretrained: str | None, budget: int | None) -> None:
    """What the loaded zoo says the user should know: the kind of data detected, where θ0 came
    from, heads built from the text tower, class folders that did not match the class names."""
    zoo = loaded_zoo(folder, data, trust, pretrained, budget)
    if zoo is None:
        return
    source = getattr(zoo, "data", None)
    if source is not None:
        st.caption(f"Evaluation data: **{source.layout}**")
    for note in getattr(zoo, "notes", []):
        st.caption(note)
    built = [t for t, origin in getattr(zoo, "head_origin", {}).items() if origin == "text tower"]
    if built:
        st.caption(f"Zero-shot heads built from θ0's text tower (CLIP prompt templates): {', '.join(built)}")


def _offer_conversion(folder: str, trust: bool, pretrained: str | None) -> None:
    """A folder with torch files: convert it once to plain safetensors
    (``zoo.folders.convert_folder``, atomic, with a progress bar) and open the copy from then on.
    The copy goes next to the folder, under the served-mode policy."""
    try:
        files = find_layout(folder)
    except IsoscopeError:
        return  # the pages show what is wrong with the folder
    if not files.torch_files():
        return
    target = f"{folder.rstrip('/')}-safetensors"
    if not st.button("Convert once to safetensors", key=key("convert_folder"),
                     help=f"Writes {target} (safetensors only, nothing that runs code) and opens it; "
                          "it needs no trust afterwards."):
        return
    with errors_in_place(stop=False), progress_bar("Converting to safetensors") as report:
        out = Path(allowed_path(target))
        if out.exists():
            raise IsoscopeError(f"{out} already exists: type it as the checkpoint folder, or remove it first")
        convert_folder(folder, out, trust_pickle=trust, progress=report, pretrained=pretrained)
        st.session_state[key("zoo_path_next")] = str(out)
        st.rerun()


def param_widget(method: Method, param: Param) -> float | int:
    """One slider per registry parameter, keyed per method so each keeps its own value."""
    is_int = param.kind is int
    cast = int if is_int else float
    return st.slider(param.label or param.name, min_value=cast(param.low), max_value=cast(param.high),
                     value=cast(param.default), step=cast(param.step), help=param.help,
                     key=key(f"p_{method.name}_{param.name}"))


def _method_section(methods: dict[str, Method]) -> tuple[str | None, dict[str, Any]]:
    if not methods:
        st.info("No merge method is registered yet (the engine is landing).", icon=":material/construction:")
        return None, {}
    names = list(methods)
    name = st.selectbox("Method", names, index=names.index(default_method(names)), key=key("method"),
                        format_func=lambda n: methods[n].display_name)
    method = methods[name]
    st.caption(f"{method.summary} [paper]({method.paper_url})")
    return name, {p.name: param_widget(method, p) for p in method.params}


def _alpha_section(method: Method | None, has_data: bool) -> tuple[str, float]:
    if method is not None and method.fixed_alpha is not None:
        st.caption(f"α is fixed to {method.fixed_alpha.label} for {method.display_name}.")
        return "fixed", 1.0  # placeholder: the merge applies the method's own α (MergeUpdate.fixed_alpha)
    modes = list(ALPHA_MODES) if has_data else ["Fixed (slider)"]
    mode = ALPHA_MODES[st.radio("Scaling α", modes, key=key("alpha_mode"), horizontal=True,
                                help="θ = base + α·Δ. On validation: the α in 0.1…3.0 with the best mean "
                                     "normalized accuracy on the validation splits.")]
    low, high, step = ALPHA_RANGE
    alpha = st.slider("α", low, high, 1.0, step, key=key("alpha"), disabled=mode == "validation",
                      help="Used when α is fixed; with validation it is the starting point shown.")
    return mode, float(alpha)


def render() -> Selection:
    """Draw the sidebar and store (and return) the selection."""
    with st.sidebar:
        st.markdown("### :material/biotech: Isoscope")
        spec, data, trust, embedded, pretrained, budget = _zoo_source()
        devices = available_devices()
        device = st.selectbox("Device", devices, key=key("device"),
                              help="CUDA when present; the digits zoo is quick on CPU.")
        st.divider()
        methods = all_methods()
        name, params = _method_section(methods)
        mode, alpha = _alpha_section(methods.get(name) if name else None, embedded or bool(data))
    sel = Selection(zoo_spec=spec or "", data_dir=data, trust_pickle=trust, pretrained=pretrained,
                    max_images=budget, device=device,
                    method=name,
                    params=tuple(sorted(params.items())), alpha_mode=mode, alpha=alpha, embedded=embedded)
    store_selection(sel)
    return sel
