"""Shared fixtures: the shipped stand-in prepared once per session, tiny CPU configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MOCAP_ROOT = Path(os.environ.get("MOCAP_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data" / "mocap17"))


@pytest.fixture(scope="session")
def mocap_store(tmp_path_factory) -> Path:
    """The CMU stand-in with synthesised detections, as `diffpose-bench prepare` writes it."""
    from diffpose.data.store import prepare

    if not (MOCAP_ROOT / "data_3d_cmu_mocap17.npz").exists():
        pytest.skip(f"the mocap stand-in is not at {MOCAP_ROOT}")
    out = tmp_path_factory.mktemp("stores") / "mocap17"
    prepare("mocap17", MOCAP_ROOT, out)
    return out


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run tiny tensors, where a second intra-op thread costs more in synchronisation than it gains
    (and on a busy machine far more); trials started by Ray set their own threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fake_store(tmp_path) -> Path:
    """A directory that passes for a store where only its presence is checked (suite and search files load
    when meta.json exists)."""
    out = tmp_path / "store"
    out.mkdir()
    (out / "meta.json").write_text("{}")
    return out
