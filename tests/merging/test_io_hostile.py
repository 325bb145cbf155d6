"""Hostile pickles with real payloads never run: every one is refused with UntrustedPickleError,
and the marker file each payload would create does not appear. A control test proves the
payloads are live (plain unpickling in a subprocess does create the markers)."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from merging.errors import CheckpointError, UntrustedPickleError
from merging.io import open_checkpoint


class Reduce:
    """Pickles as ``fn(*args)``: the classic __reduce__ payload (``fn`` may itself be a Reduce)."""

    def __init__(self, fn: object, args: tuple) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple:
        return (self.fn, self.args)

    def __call__(self, *_args: object) -> None:  # pickle insists the reduce target is callable
        raise AssertionError("never called while pickling")


class SetStateBomb:
    """A class whose __setstate__ (run by BUILD while unpickling) writes the marker."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).write_text("ran")


def payloads(marker: Path) -> dict[str, object]:
    """name -> object whose unpickling creates ``marker``."""
    m = str(marker)
    return {
        "os.system": Reduce(os.system, (f"touch {m}",)),
        "builtins.open": Reduce(builtins.open, (m, "w")),
        "subprocess.run": Reduce(subprocess.run, (["touch", m],)),
        "eval": Reduce(eval, (f"open({m!r}, 'w').close()",)),
        "exec": Reduce(exec, (f"open({m!r}, 'w').close()",)),
        "getattr(__import__('os'), 'system')": Reduce(
            Reduce(getattr, (Reduce(__import__, ("os",)), "system")), (f"touch {m}",)),
        "Path.write_text": Reduce(Path.write_text, (marker, "ran")),
        "__setstate__": SetStateBomb(m),
    }


def _raw(obj: object, protocol: int) -> bytes:
    return pickle.dumps(obj, protocol=protocol)


def _torch(obj: object, zip_format: bool) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


# container -> (file name, bytes builder). Payloads hide among real tensors where the format allows.
CONTAINERS: dict[str, tuple[str, Callable[[object], bytes]]] = {
    "raw pickle p0": ("model.pt", lambda o: _raw(o, 0)),
    "raw pickle p2": ("model.pt", lambda o: _raw(o, 2)),
    "raw pickle p5": ("model.bin", lambda o: _raw(o, 5)),
    "torch zip": ("finetuned.pt", lambda o: _torch({"w": torch.ones(2), "x": o}, True)),
    "torch legacy": ("finetuned.pt", lambda o: _torch({"w": torch.ones(2), "x": o}, False)),
    "torch zip state_dict wrapper": ("ckpt.pth", lambda o: _torch({"state_dict": {"w": torch.ones(2), "x": o}}, True)),
    "torch zip named .safetensors": ("model.safetensors", lambda o: _torch({"x": o}, True)),
    "raw pickle named .safetensors": ("model.safetensors", lambda o: _raw(o, 2)),
}
PAYLOAD_NAMES = list(payloads(Path("m")))


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("payload", PAYLOAD_NAMES)
def test_hostile_file_is_refused_and_does_not_run(tmp_path: Path, container: str, payload: str) -> None:
    marker = tmp_path / "MARKER"
    name, build = CONTAINERS[container]
    path = tmp_path / name
    path.write_bytes(build(payloads(marker)[payload]))
    with pytest.raises(UntrustedPickleError) as info:
        open_checkpoint(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "execute code" in message and "--trust-pickle" in message
    assert "\n" not in message
    time.sleep(0.05 if "subprocess" in payload or "system" in payload else 0)
    assert not marker.exists(), f"payload {payload} ran"


def test_payloads_are_live_when_unpickled_naively(tmp_path: Path) -> None:
    """Control: the same files do create their markers under pickle.load / torch.load(weights_only=False)."""
    jobs = []
    for payload in PAYLOAD_NAMES:
        for container in ("raw pickle p2", "torch zip"):
            marker = tmp_path / f"M-{len(jobs)}"
            name, build = CONTAINERS[container]
            path = tmp_path / f"{len(jobs)}-{name}"
            path.write_bytes(build(payloads(marker)[payload]))
            jobs.append((str(path), container.startswith("torch"), str(marker)))
    script = textwrap.dedent("""
        import pickle, sys, torch
        sys.path.insert(0, sys.argv[1])
        import tests.merging.test_io_hostile  # noqa: F401 - SetStateBomb must be importable
        for line in sys.stdin.read().splitlines():
            path, is_torch = line.split("\\t")
            try:
                torch.load(path, weights_only=False) if is_torch == "1" else pickle.load(open(path, "rb"))
            except Exception:
                pass
    """)
    stdin = "\n".join(f"{p}\t{int(t)}" for p, t, _ in jobs)
    root = str(Path(__file__).resolve().parents[2])
    subprocess.run([sys.executable, "-c", script, root], input=stdin, text=True, check=True, timeout=120)
    deadline = time.time() + 5
    while time.time() < deadline and not all(Path(m).exists() for _, _, m in jobs):
        time.sleep(0.05)
    assert [m for _, _, m in jobs if not Path(m).exists()] == []


def test_trusting_a_hostile_file_is_the_users_explicit_choice(tmp_path: Path) -> None:
    """With trust_pickle=True the file is unpickled (and the payload runs): the flag is meaningful."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "model.pt"
    path.write_bytes(_torch({"w": torch.ones(2), "x": payloads(marker)["builtins.open"]}, True))
    with pytest.raises(CheckpointError, match="'x' is a TextIOWrapper, not a tensor"):
        open_checkpoint(path, trust_pickle=True)
    assert marker.exists()
