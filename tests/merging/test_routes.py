"""The route log: which linear-algebra route each layer shape took."""

from __future__ import annotations

import threading

import torch

from merging import routes
from merging.merge import Merger
from tests.merging.conftest import make_models


def test_routes_are_counted_per_layer_shape_and_only_while_recording() -> None:
    pre, fts = make_models(3)
    merger = Merger(pre, fts, device="cpu")
    merger.update("iso_c")  # not recorded: nothing to see afterwards
    merger.clear_cache()
    with routes.recording() as log:
        merger.update("iso_c")
    got = log.summary()
    # tall 24×16 (ratio 1.5, not elongated enough for the Gram), square 20×20 (Newton), and the
    # elongated 6×16 positional embedding (one eigh of its small Gram)
    assert got["24x16"] == {routes.FULL_SVD: 1}
    assert got["20x20"] == {routes.NEWTON: 1}
    assert got["6x16"] == {routes.GRAM_EIGH: 1}
    assert "8x8" not in got  # text_projection is not merged as a matrix
    with routes.recording() as again:
        merger.update("iso_c")  # a new recording starts from zero
    assert again.summary() == got


def test_a_recording_sees_only_its_own_thread() -> None:
    pre, fts = make_models(2)
    other = Merger(pre, fts, device="cpu")
    with routes.recording() as log:
        worker = threading.Thread(target=lambda: other.update("tsv_m"))
        worker.start()
        worker.join()
        with routes.layer((5, 4)):
            routes.taken(routes.KRYLOV)
    assert log.summary() == {"5x4": {routes.KRYLOV: 1}}
    assert routes.shape_name(torch.Size([2304, 768])) == "2304x768"
