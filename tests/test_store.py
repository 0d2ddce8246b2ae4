import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from diffpose.data.skeleton import LEFT, RIGHT, flip_permutation
from diffpose.data.source import Clip, DataError, SourceInfo
from diffpose.data.store import PoseStore, Sampler, mirror, write_store


def make_clip(subject, action, camera, frames, rng, kernels=3, width=1000, height=1000):
    pose_3d = rng.normal(0, 0.3, (frames, 17, 3)).astype(np.float32) + np.array([0, 0, 5], np.float32)
    pose_2d = rng.uniform(0, width, (frames, 17, 2)).astype(np.float32)
    gmm = np.zeros((frames, 17, kernels, 5), np.float32)
    w = rng.dirichlet(np.ones(kernels), size=(frames, 17)).astype(np.float32)
    gmm[..., 0] = w
    gmm[..., 1:3] = pose_2d[:, :, None] + rng.normal(0, 5, (frames, 17, kernels, 2))
    gmm[..., 3:5] = rng.uniform(1, 10, (frames, 17, kernels, 2))
    return Clip(subject=subject, action=action, camera=camera, width=width, height=height, pose_2d=pose_2d,
                gmm=gmm, pose_3d=pose_3d, world_3d=pose_3d.copy(), valid=np.ones(frames, bool))


@pytest.fixture
def info():
    return SourceInfo(dataset="toy", detector="synth", splits={"train": ("A", "B"), "test": ("C",)}, fps=50.0,
                      files=())


@pytest.fixture
def store(tmp_path, info):
    rng = np.random.default_rng(0)
    clips = [make_clip("A", "Walk 1", 0, 12, rng), make_clip("A", "Walk 1", 1, 12, rng),
             make_clip("B", "Sit 2", 0, 7, rng), make_clip("C", "Walk 3", 0, 9, rng)]
    write_store(info, clips, tmp_path / "s", default_val=("B",))
    return PoseStore.open(tmp_path / "s"), clips


def test_round_trip_normalises_2d_and_makes_3d_root_relative(store):
    s, clips = store
    assert len(s) == 12 + 12 + 7 + 9
    assert s.meta["rows_per_split"] == {"train": 31, "test": 9}
    c = clips[1]
    rows = np.flatnonzero(s.camera == 1)
    assert s.subjects[s.subject[rows[0]]] == "A" and s.actions[s.action[rows[0]]] == "Walk 1"
    # VideoPose3D normalisation: u / w * 2 - 1, v / w * 2 - h / w (w = h = 1000 here)
    np.testing.assert_allclose(s.pose_2d[rows], c.pose_2d / 500.0 - 1.0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s.pose_3d[rows], c.pose_3d - c.pose_3d[:, :1], atol=1e-6)
    assert np.all(s.pose_3d[:, 0] == 0)
    # kernels sorted by weight, sigma in normalised units
    g = s.gmm_2d[rows]
    assert np.all(np.diff(g[..., 0], axis=-1) <= 0)
    order = np.argsort(-c.gmm[..., 0], axis=-1, kind="stable")
    np.testing.assert_allclose(g[..., 3], np.take_along_axis(c.gmm[..., 3], order, -1) / 500.0, rtol=1e-6)
    table = pq.read_table(s.path / "poses.parquet")
    np.testing.assert_allclose(np.asarray(table.column("root_3d").to_pylist())[rows], c.pose_3d[:, 0], atol=1e-6)


def test_meta_records_the_dataset_and_a_content_fingerprint(store, tmp_path, info):
    s, clips = store
    meta = json.loads((s.path / "meta.json").read_text())
    assert meta["dataset"] == "toy" and meta["kernels"] == 3 and meta["default_val"] == ["B"]
    again = write_store(info, clips, tmp_path / "again", default_val=("B",))
    assert again["fingerprint"] == meta["fingerprint"]
    changed = [clips[0]] + clips[1:3]
    assert write_store(info, changed, tmp_path / "other", default_val=("B",))["fingerprint"] != meta["fingerprint"]


def test_kernel_padding_when_clips_differ_in_m(tmp_path, info):
    rng = np.random.default_rng(1)
    clips = [make_clip("A", "x", 0, 4, rng, kernels=1), make_clip("B", "y", 0, 4, rng, kernels=3)]
    write_store(info, clips, tmp_path / "s", default_val=("B",))
    s = PoseStore.open(tmp_path / "s")
    assert s.gmm_2d.shape[2] == 3
    assert np.all(s.gmm_2d[:4, :, 1:, 0] == 0) and np.allclose(s.gmm_2d[..., 0].sum(-1), 1, atol=1e-5)


def test_refuses_to_overwrite_a_directory_that_is_not_a_store(tmp_path, info):
    rng = np.random.default_rng(2)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a store"):
        write_store(info, [make_clip("A", "x", 0, 3, rng)], tmp_path / "s", default_val=("A",))
    assert (tmp_path / "s" / "precious.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temp dir left behind


def test_unknown_subject_and_missing_store_are_clear_errors(store, tmp_path):
    s, _ = store
    with pytest.raises(DataError, match="unknown subject"):
        s.rows(("Z",))
    with pytest.raises(DataError, match="not a store"):
        PoseStore.open(tmp_path / "nowhere")


def test_rows_respect_stride_and_subjects(store):
    s, _ = store
    rows = s.rows(("A",), stride=4)
    assert set(s.frame[rows]) == {0, 4, 8} and len(rows) == 6


def test_kernel_draws_follow_pi(tmp_path, info):
    rng = np.random.default_rng(3)
    clip = make_clip("A", "x", 0, 1, rng)
    pi = np.array([0.6, 0.3, 0.1], np.float32)
    gmm = clip.gmm.copy()
    gmm[..., 0] = pi
    gmm[..., 1] = np.arange(3) * 100.0  # kernel k has mu_u = 100 k pixels
    clip = Clip(**{**clip.__dict__, "gmm": gmm})
    write_store(info, [clip], tmp_path / "s", default_val=())
    s = PoseStore.open(tmp_path / "s")
    sampler = Sampler(s)
    n = 20000
    batch = sampler.batch(torch.zeros(n, dtype=torch.long), draw_kernels=True,
                          generator=torch.Generator().manual_seed(0))
    u = batch.pose_2d[:, 0, :, 0]                                   # (n, J) normalised mu_u
    k = torch.round((u + 1.0) * 500.0 / 100.0).long()
    freq = torch.bincount(k.flatten(), minlength=3).double() / k.numel()
    se = np.sqrt(pi * (1 - pi) / k.numel())
    assert np.all(np.abs(freq.numpy() - pi) < 5 * se), freq
    # each joint draws independently: joints disagree in some samples
    assert (k != k[:, :1]).any()


def test_windows_are_centred_and_edge_padded_within_the_clip(store):
    s, _ = store
    sampler = Sampler(s, frames=5)
    first = int(np.flatnonzero((s.camera == 1) & (s.frame == 0))[0])   # first row of the second clip
    win = sampler.window_rows(torch.tensor([first, first + 1, first + 11]))
    assert win[0].tolist() == [first, first, first, first + 1, first + 2]
    assert win[1].tolist() == [first, first, first + 1, first + 2, first + 3]
    assert win[2].tolist() == [first + 9, first + 10, first + 11, first + 11, first + 11]
    batch = sampler.batch(torch.tensor([first]))
    assert batch.pose_2d.shape == (1, 5, 17, 2) and batch.gmm_2d.shape == (1, 5, 17, 3, 5)


def test_flip_mirrors_2d_3d_and_gmm_consistently(store):
    s, _ = store
    sampler = Sampler(s, frames=3)
    rows = torch.arange(10)
    plain = sampler.batch(rows)
    flipped = sampler.batch(rows, flip=torch.ones(10, dtype=torch.bool))
    perm = torch.from_numpy(flip_permutation())
    torch.testing.assert_close(flipped.pose_3d, mirror(plain.pose_3d, perm))
    torch.testing.assert_close(flipped.pose_2d[..., LEFT[0], 0], -plain.pose_2d[..., RIGHT[0], 0])
    torch.testing.assert_close(flipped.gmm_2d[..., LEFT[0], :, 1], -plain.gmm_2d[..., RIGHT[0], :, 1])
    torch.testing.assert_close(mirror(mirror(plain.pose_3d, perm), perm), plain.pose_3d)


def test_epoch_is_deterministic_for_a_seed_and_covers_rows(store):
    s, _ = store
    sampler = Sampler(s)
    rows = s.rows(("A", "B"))

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return [b.rows.tolist() for b in sampler.epoch(rows, 8, g)]

    assert run(0) == run(0) and run(0) != run(1)
    seen = sum(run(0), [])
    assert len(seen) == len(set(seen)) == (len(rows) // 8) * 8


def test_a_store_is_read_once_while_its_files_stay_the_same(tmp_path, info):
    rng = np.random.default_rng(5)
    clips = [make_clip("A", "Walk 1", 0, 6, rng), make_clip("B", "Sit 2", 0, 5, rng), make_clip("C", "x", 0, 4, rng)]
    write_store(info, clips, tmp_path / "s", default_val=("B",))
    first = PoseStore.open(tmp_path / "s")
    assert PoseStore.open(tmp_path / "s").pose_3d is first.pose_3d             # kept: not read again
    via_link = tmp_path / "link"
    via_link.symlink_to(tmp_path / "s")
    linked = PoseStore.open(via_link)
    assert linked.pose_3d is first.pose_3d and linked.path == via_link          # the caller's path, same arrays

    write_store(info, clips[:2] + [make_clip("C", "x", 0, 9, rng)], tmp_path / "s", default_val=("B",))
    again = PoseStore.open(tmp_path / "s")                                      # prepared again: read again
    assert len(again) == len(first) + 5 and again.meta["fingerprint"] != first.meta["fingerprint"]

    write_store(info, clips, tmp_path / "t", default_val=("B",))
    PoseStore.open(tmp_path / "t")                                              # another store: the last kept
    assert PoseStore.open(tmp_path / "s").pose_3d is not again.pose_3d
