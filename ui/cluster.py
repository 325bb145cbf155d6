"""The app as a front end to a Ray cluster: when it is started with one (``ISOSCOPE_RAY_ADDRESS``,
``make run RAY=…``), the Common subspace sweeps and the Alignment page's larger method sets run
their units on it (``analysis.cluster``), progress fed by completed units, rows into the same
result store. One pool of workers per zoo, shared by every session (never mutated by a page)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

from analysis.cluster import Cluster, Resources, ZooSpec, resources
from merging import settings
from merging.errors import IsoscopeError
from ui.core import cached, errors_in_place, progress_bar
from ui.models import current_zoo
from ui.state import Selection, selection


def cluster_address() -> str | None:
    """The cluster the app was started with, or None (everything runs in-process)."""
    return settings.value("ray_address") or None


def _spec(sel: Selection) -> ZooSpec:
    folder = Path(sel.zoo_spec)
    return ZooSpec(zoo=str(folder.resolve()) if folder.is_dir() else sel.zoo_spec, data=sel.data_dir,
                   pretrained=sel.pretrained, trust_pickle=sel.trust_pickle, device=sel.device,
                   threads=torch.get_num_threads())


def current_cluster(sel: Selection | None = None) -> Cluster | None:
    """The started pool of workers over the current zoo, or None without a cluster address."""
    address = cluster_address()
    if address is None:
        return None
    sel = sel or selection()
    zoo = current_zoo(sel)

    def build() -> Cluster:
        with progress_bar(f"Starting workers on the Ray cluster at {address}") as report:
            report(0.1, "opening the zoo on every worker")
            cluster = Cluster(address, _spec(sel)).start()
        if cluster.info is not None and cluster.info.fingerprint != zoo.fingerprint:
            cluster.close()
            raise IsoscopeError(f"the workers see a different zoo at {sel.zoo_spec} (fingerprint "
                                f"{cluster.info.fingerprint}, here {zoo.fingerprint}): the path must hold the "
                                "same files on every node")
        return cluster

    with errors_in_place():
        return cached("cluster", (address, sel.zoo_key), build)


@st.cache_data(ttl=30, show_spinner=False)
def _resources(address: str) -> Resources:
    return resources(address)


def sidebar_line() -> None:
    """The cluster's nodes, CPUs and GPUs in the sidebar (nothing without a cluster address)."""
    address = cluster_address()
    if address is None:
        return
    with errors_in_place(stop=False):
        st.caption(f":material/hub: Ray cluster at `{address}`: {_resources(address)}. Sweeps and the larger "
                   "Alignment sets run there.")
