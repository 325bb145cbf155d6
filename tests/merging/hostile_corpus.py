"""Files that need no code execution to hurt a server: each is a CPU hang, a crash, an
unbounded fan-out, an allocation far beyond its size, a record rewritten after its checks, a raw
exception, a tensor with no data or a memory amplifier, when read by a naive loader.

``CORPUS`` maps a case name to (file name, builder, words the error must contain). Builders
write raw pickle opcodes (``op`` below) or use torch.save where the attack is an ordinary
tensor; ``write_corpus(folder)`` writes them all (``tests/merging/test_io_budgets.py`` and the
browser test open them). The cases from the first audit come first, then our own.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

P = pickle  # opcode constants: P.MARK, P.TUPLE2, ...


def s(text: str) -> bytes:
    """BINUNICODE."""
    raw = text.encode()
    return P.BINUNICODE + struct.pack("<I", len(raw)) + raw


def g(module: str, name: str) -> bytes:
    return P.GLOBAL + f"{module}\n{name}\n".encode()


def i(value: int) -> bytes:
    """BININT (4 bytes, signed) or LONG4 for anything larger."""
    if -2**31 <= value < 2**31:
        return P.BININT + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return P.LONG4 + struct.pack("<i", len(raw)) + raw


def tup(*items: bytes) -> bytes:
    return P.MARK + b"".join(items) + P.TUPLE


def pkl(body: bytes) -> bytes:
    return P.PROTO + b"\x02" + body + P.STOP


def as_zip(data_pkl: bytes, storages: dict[str, bytes] | None = None, extra: int = 0) -> bytes:
    """A torch zip checkpoint around ``data_pkl`` (stored, like torch.save), ``extra`` empty members."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")  # torch.load checks it: without it the attack is never reached
        for key, data in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", data)
        for n in range(extra):
            zf.writestr(f"archive/x{n}", b"")
    return buf.getvalue()


def keyed(key: bytes) -> bytes:
    """{key: 1}: the key is hashed when the dict is built."""
    return pkl(P.EMPTY_DICT + key + i(1) + P.SETITEM)


def storage(key: str, numel: int, dtype: str = "FloatStorage") -> bytes:
    """A BINPERSID storage reference as torch writes it."""
    return tup(s("storage"), g("torch", dtype), s(key), s("cpu"), i(numel)) + P.BINPERSID


def tensor(storage_ref: bytes, offset: int, size: tuple, stride: tuple) -> bytes:
    return (g("torch._utils", "_rebuild_tensor_v2") + tup(storage_ref, i(offset), tup(*map(i, size)),
            tup(*map(i, stride)), P.NEWFALSE, g("collections", "OrderedDict") + P.EMPTY_TUPLE + P.REDUCE) + P.REDUCE)


def state_dict(entries: dict[str, bytes]) -> bytes:
    return pkl(P.EMPTY_DICT + P.MARK + b"".join(s(k) + v for k, v in entries.items()) + P.SETITEMS)


def module(params: bytes, children: bytes) -> bytes:
    """An nn.Module as torch pickles it: a record of torch.nn.modules.module.Module with BUILD state."""
    state = (P.EMPTY_DICT + P.MARK + s("_parameters") + params + s("_buffers") + P.EMPTY_DICT
             + s("_modules") + children + P.SETITEMS)
    return g("torch.nn.modules.module", "Module") + P.EMPTY_TUPLE + P.NEWOBJ + state + P.BUILD


def fan_out(levels: int) -> bytes:
    """Every level's two children are the one module below it (memo): 2**levels names."""
    body = module(P.EMPTY_DICT + P.MARK + s("w") + tensor(storage("0", 1), 0, (1,), (1,)) + P.SETITEMS,
                  P.EMPTY_DICT) + P.BINPUT + b"\x00"
    for _ in range(levels):
        body = module(P.EMPTY_DICT, P.EMPTY_DICT + P.MARK + s("a") + body + s("b") + P.BINGET + b"\x00"
                      + P.SETITEMS) + P.BINPUT + b"\x00"
    return as_zip(pkl(body), {"0": b"\0" * 4})


def rebuilt_record() -> bytes:
    """BUILD aimed at the reader's storage record: after its checks, its view moves 1024
    elements *before* the storage (the bytes of another storage)."""
    ref = storage("1", 1) + tup(s("torch.FloatStorage"), s("1"), i(1), tup(s("1"), i(-1024), i(1))) + P.BUILD
    return as_zip(state_dict({"w": tensor(ref, 0, (1,), (1,))}), {"0": b"\x11" * 4096, "1": b"\0" * 4})


def torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def sparse() -> object:
    return {"w": torch.sparse_coo_tensor(torch.zeros(2, 1, dtype=torch.long), torch.ones(1), (10**5, 10**5))}


def many_classes(n: int) -> bytes:
    return pkl(P.EMPTY_LIST + P.MARK + b"".join(g("m", f"C{k}") for k in range(n)) + P.APPENDS)


def central_directory_claim(members: int) -> bytes:
    """A zip whose end record claims ``members`` members (and a directory to match)."""
    data = as_zip(state_dict({"w": tensor(storage("0", 1), 0, (1,), (1,))}), {"0": b"\0" * 4})
    at = data.rfind(b"PK\x05\x06")
    return data[:at + 8] + struct.pack("<HH", members, members) + data[at + 12:]


# name -> (file name, builder, words the error must contain)
CORPUS: dict[str, tuple[str, Callable[[], bytes], str]] = {
    # the audit's classes
    "tuple DAG key (2**64 hash steps)": ("dag.pt", lambda: as_zip(keyed(
        s("x") + P.TUPLE1 + (P.DUP + P.TUPLE2) * 64)), "'key nodes' budget"),
    "tuple 10**6 deep as a key (C stack)": ("deep.pt", lambda: as_zip(keyed(
        s("x") + P.TUPLE1 * 10**6)), "budget"),
    "tuple 20k deep as a key": ("deep20k.pt", lambda: as_zip(keyed(s("x") + P.TUPLE1 * 20_000)), "'key nodes' budget"),
    "module fan-out 2**64 names": ("fan.pt", lambda: fan_out(64), "appears twice"),
    "stride-0 view 2**13 x 2**13 of one element": ("expand.pt", lambda: torch_bytes(
        {"w": torch.ones(1).expand(2**13, 2**13)}), "expanded view"),
    "BUILD rewrites the storage record": ("rebuilt.pt", rebuilt_record, "BUILD aimed at"),
    "unhashable key": ("unhashable.pt", lambda: as_zip(keyed(P.EMPTY_LIST)), "unhashable list"),
    "5000-digit int key": ("bigkey.pt", lambda: as_zip(keyed(i(10**5000))), "'int bytes' budget"),
    "5000-digit numel": ("bignumel.pt", lambda: as_zip(state_dict({"w": tensor(storage("0", 10**5000), 0, (1,), (1,))}),
                                                        {"0": b"\0" * 4}), "'int bytes' budget"),
    "5000-digit int as a name": ("bigname.pt", lambda: as_zip(pkl(P.EMPTY_DICT + i(10**5000) + tensor(
        storage("0", 1), 0, (1,), (1,)) + P.SETITEM), {"0": b"\0" * 4}), "'int bytes' budget"),
    "meta tensor 10**5 x 10**5": ("meta.pt", lambda: torch_bytes({"w": torch.empty(10**5, 10**5, device="meta")}),
                                  "not a state dict of tensors"),
    "sparse tensor 10**5 x 10**5": ("sparse.pt", lambda: torch_bytes(sparse()), "not a state dict of tensors"),
    "3.8 MiB of empty sets": ("sets.pt", lambda: pkl(P.MARK + P.EMPTY_SET * (38 * 2**20 // 10) + P.LIST),
                              "'objects' budget"),
    "400k distinct class names": ("classes.pt", lambda: many_classes(400_000), "budget"),
    "zip claiming 65535 members": ("members.pt", lambda: central_directory_claim(65535), "'zip members' budget"),
    # our own
    "memo flood": ("memo.pt", lambda: pkl(P.NONE + P.MEMOIZE * 10**6 + P.POP), "'memo' budget"),
    "MARK flood": ("marks.pt", lambda: pkl(P.MARK * 100_000), "'depth' budget"),
    "one list of 2**20 items": ("list.pt", lambda: pkl(P.EMPTY_LIST + P.MARK + P.NONE * 2**20 + P.APPENDS),
                                "budget"),
    "parameter of a parameter, 20k deep": ("param.pt", lambda: as_zip(state_dict({"w": g(
        "torch._utils", "_rebuild_parameter") * 20_000 + tensor(storage("0", 1), 0, (1,), (1,)) + (
        P.NEWFALSE + g("collections", "OrderedDict") + P.EMPTY_TUPLE + P.REDUCE + P.TUPLE3 + P.REDUCE) * 20_000}),
        {"0": b"\0" * 4}), "nested too deeply"),
    "a module inside itself": ("cycle.pt", lambda: as_zip(pkl(
        g("torch.nn.modules.module", "Module") + P.EMPTY_TUPLE + P.NEWOBJ + P.BINPUT + b"\x01"
        + P.EMPTY_DICT + P.MARK + s("_parameters") + P.EMPTY_DICT + s("_buffers") + P.EMPTY_DICT + s("_modules")
        + P.EMPTY_DICT + s("me") + P.BINGET + b"\x01" + P.SETITEM + P.SETITEMS + P.BUILD)), "appears twice"),
    "negative tensor offset": ("negoffset.pt", lambda: as_zip(state_dict({"w": tensor(storage("0", 4), -2, (2,), (1,))}),
                                                              {"0": b"\0" * 16}), "not a state dict of tensors"),
    "overlapping view": ("overlap.pt", lambda: as_zip(state_dict({"w": tensor(storage("0", 256), 0, (64, 64), (1, 1))}),
                                                      {"0": b"\0" * 1024}), "expanded view"),
    "many tensors on one storage": ("tied.pt", lambda: as_zip(state_dict({f"w{k}": tensor(storage("0", 2**18), 0,
                                                                                         (2**18,), (1,))
                                                                          for k in range(64)}),
                                                              {"0": b"\0" * 2**20}), "'output bytes' budget"),
    "a 100 KB global name": ("longname.pt", lambda: as_zip(pkl(g("m" * 100_000, "C"))), "'name chars' budget"),
    "INT opcode of 4000 digits": ("intline.pt", lambda: pkl(P.INT + b"9" * 4000 + b"\n"), "'int bytes' budget"),
    "complex storage": ("complex.pt", lambda: as_zip(state_dict({"w": tensor(storage("0", 1, "ComplexFloatStorage"),
                                                                             0, (1,), (1,))}), {"0": b"\0" * 8}),
                        "unsupported storage type"),
}


def write_corpus(folder: Path) -> dict[str, Path]:
    """Every case of ``CORPUS`` as a file in ``folder``; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (file_name, build, _) in CORPUS.items():
        paths[name] = folder / file_name
        paths[name].write_bytes(build())
    return paths
