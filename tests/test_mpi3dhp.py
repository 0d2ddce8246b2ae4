"""MPI-INF-3DHP readers on tiny files in P-STMO's preprocessed layout."""

from __future__ import annotations

import numpy as np
import pytest
from formats import MPI_FROM_OURS, MPI_NAME_TO_OURS, save_npz, write_mpi3dhp_test, write_mpi3dhp_train

from diffpose.data.mpi3dhp import (
    MPI_JOINT_NAMES,
    MPI_LEFT,
    MPI_PARENTS,
    MPI_RIGHT,
    MPI_ROOT,
    MPI_TO_OURS,
    read_mpi3dhp,
    read_test,
    read_train,
)
from diffpose.data.skeleton import JOINT_NAMES, LEFT, PARENTS, RIGHT, ROOT
from diffpose.data.source import DataError

TRAIN = {"S1 Seq1": 9, "S1 Seq2": 5, "S8 Seq2": 7}
TEST = {"TS1": 10, "TS5": 6}


@pytest.fixture
def root(tmp_path):
    train = write_mpi3dhp_train(tmp_path / "data_train_3dhp.npz", TRAIN, cameras=(0, 4, 8))
    test = write_mpi3dhp_test(tmp_path / "data_test_3dhp.npz", TEST)
    return tmp_path, train, test


# ------------------------------------------------------------------------------------------- joint order


def test_mapping_is_a_permutation_with_our_bones():
    assert sorted(MPI_TO_OURS) == list(range(17))
    assert MPI_TO_OURS[ROOT] == MPI_ROOT
    for child, parent in enumerate(PARENTS):
        if parent >= 0:
            assert MPI_PARENTS[MPI_TO_OURS[child]] == MPI_TO_OURS[parent], JOINT_NAMES[child]
    assert sorted(MPI_TO_OURS[j] for j in LEFT) == list(MPI_LEFT)
    assert sorted(MPI_TO_OURS[j] for j in RIGHT) == list(MPI_RIGHT)


def test_mapping_agrees_with_the_joint_names():
    """MPI_TO_OURS against a name table written independently (tests/formats.py)."""
    for ours, mpi in enumerate(MPI_TO_OURS):
        assert MPI_NAME_TO_OURS[MPI_JOINT_NAMES[mpi]] == JOINT_NAMES[ours]
    np.testing.assert_array_equal(np.asarray(MPI_TO_OURS)[MPI_FROM_OURS], np.arange(17))


def test_mpi_parents_follow_the_names():
    named = {n: i for i, n in enumerate(MPI_JOINT_NAMES)}
    assert MPI_PARENTS[named["right_wrist"]] == named["right_elbow"]
    assert MPI_PARENTS[named["left_knee"]] == named["left_hip"]
    assert MPI_PARENTS[named["left_hip"]] == named["pelvis"]
    assert MPI_PARENTS[named["neck"]] == named["spine"]
    assert MPI_PARENTS[named["head_top"]] == named["head"]


# ------------------------------------------------------------------------------------------------ reading


def test_read_everything(root):
    path, train, test = root
    info, clips = read_mpi3dhp(path)
    assert len(clips) == 3 * 3 + 2
    assert info.dataset == "mpi3dhp" and info.detector == "gt"
    assert info.splits == {"train": ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8"),
                           "test": ("TS1", "TS2", "TS3", "TS4", "TS5", "TS6")}
    assert info.notes["annotation"] == "univ_annot3"
    assert "data_train_3dhp.npz" in info.notes["annotation_source"]
    assert "sigma 5 px" in info.notes["gmm"] and "S1 Seq2=25" in info.notes["fps"]
    assert info.files == (str(path / "data_train_3dhp.npz"), str(path / "data_test_3dhp.npz"))
    by_key = {(c.subject, c.action, c.camera): c for c in clips}
    c = by_key[("S8", "Seq2", 4)]
    uv, xyz = train[("S8", "Seq2", 4)]
    np.testing.assert_allclose(c.pose_3d, xyz, atol=1e-6)  # mm -> m, MPI order -> ours
    np.testing.assert_allclose(c.pose_2d, uv, atol=1e-3)
    assert c.world_3d is None and c.valid.all() and (c.width, c.height) == (2048, 2048)
    assert c.gmm.shape == (7, 17, 1, 5)
    ts5 = by_key[("TS5", "TS5", 0)]
    uv, xyz, valid = test["TS5"]
    assert (ts5.width, ts5.height) == (1920, 1080)
    np.testing.assert_array_equal(ts5.valid, valid)
    assert ts5.valid.tolist() == [True, True, False, True, True, False]
    np.testing.assert_allclose(ts5.pose_3d, xyz, atol=1e-6)
    assert (by_key[("TS1", "TS1", 0)].width, by_key[("TS1", "TS1", 0)].height) == (2048, 2048)


def test_units_are_metres_and_pelvis_first(root):
    path, *_ = root
    _, clips = read_mpi3dhp(path, subjects=["S1"])
    c = clips[0]
    assert 3.0 < c.pose_3d[:, 0, 2].mean() < 5.0  # pelvis ~4 m in front of the camera
    head_above_pelvis = c.pose_3d[:, 0, 1] - c.pose_3d[:, 10, 1]  # y points down
    assert (head_above_pelvis > 0.5).all()


def test_subjects_pick_the_files(root, tmp_path):
    path, *_ = root
    (path / "data_test_3dhp.npz").unlink()
    info, clips = read_mpi3dhp(path, subjects=["S1"])
    assert {c.subject for c in clips} == {"S1"} and len(clips) == 6
    assert info.files == (str(path / "data_train_3dhp.npz"),)
    with pytest.raises(DataError, match="data_test_3dhp.npz: file not found"):
        read_mpi3dhp(path)


def test_annot3_reads_d3dps_files(tmp_path):
    write_mpi3dhp_train(tmp_path / "data_train_3dhp_ori.npz", {"S2 Seq1": 4}, cameras=(1,))
    write_mpi3dhp_test(tmp_path / "data_test_3dhp_ori.npz", {"TS3": 4})
    info, clips = read_mpi3dhp(tmp_path, annotation="annot3")
    assert info.notes["annotation"] == "annot3" and len(clips) == 2
    with pytest.raises(DataError, match="data_train_3dhp.npz: file not found"):
        read_mpi3dhp(tmp_path)


def test_unknown_annotation(tmp_path):
    with pytest.raises(ValueError, match="annotation"):
        read_mpi3dhp(tmp_path, annotation="annot2")


# ------------------------------------------------------------------------------------------------ bad input


def _train_data(path):
    return np.load(path, allow_pickle=True)["data"].item()


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data_train_3dhp.npz: file not found"):
        read_mpi3dhp(tmp_path)


def test_wrong_key(tmp_path):
    save_npz(tmp_path / "t.npz", positions_3d={})
    with pytest.raises(DataError, match="t.npz.*'data'"):
        read_train(tmp_path / "t.npz")


def test_wrong_joint_count(root):
    path, *_ = root
    data = _train_data(path / "data_train_3dhp.npz")
    data["S1 Seq1"][0]["4"]["data_3d"] = data["S1 Seq1"][0]["4"]["data_3d"][:, :16]
    save_npz(path / "data_train_3dhp.npz", data=data)
    with pytest.raises(DataError, match=r"data_train_3dhp.npz: S1/Seq1/cam4 data_3d: \(9, 16, 3\)"):
        read_mpi3dhp(path)


def test_2d_3d_frame_mismatch(root):
    path, *_ = root
    data = np.load(path / "data_test_3dhp.npz", allow_pickle=True)["data"].item()
    data["TS1"]["data_2d"] = data["TS1"]["data_2d"][:-1]
    save_npz(path / "data_test_3dhp.npz", data=data)
    with pytest.raises(DataError, match="data_test_3dhp.npz: TS1/TS1/cam0: data_2d has 9 frames, data_3d 10"):
        read_test(path / "data_test_3dhp.npz")


def test_nan_in_a_valid_frame_fails_in_an_invalid_one_is_zeroed(root):
    path, *_ = root
    data = np.load(path / "data_test_3dhp.npz", allow_pickle=True)["data"].item()
    data["TS1"]["data_3d"][2, 3] = np.nan  # frame 2 is invalid
    save_npz(path / "data_test_3dhp.npz", data=data)
    clip = next(c for c in read_test(path / "data_test_3dhp.npz") if c.subject == "TS1")
    assert not clip.valid[2] and (clip.pose_3d[2] == 0).all() and np.isfinite(clip.pose_3d).all()
    data["TS1"]["data_3d"][1, 3] = np.inf  # frame 1 is valid
    save_npz(path / "data_test_3dhp.npz", data=data)
    with pytest.raises(DataError, match="data_test_3dhp.npz: TS1/TS1/cam0 data_3d.*NaN or inf"):
        read_test(path / "data_test_3dhp.npz")


def test_nan_in_train(root):
    path, *_ = root
    data = _train_data(path / "data_train_3dhp.npz")
    data["S1 Seq2"][0]["0"]["data_2d"][0, 0, 0] = np.nan
    save_npz(path / "data_train_3dhp.npz", data=data)
    with pytest.raises(DataError, match="data_train_3dhp.npz: S1/Seq2/cam0 data_2d.*NaN or inf"):
        read_train(path / "data_train_3dhp.npz")


def test_bad_valid_mask(root):
    path, *_ = root
    data = np.load(path / "data_test_3dhp.npz", allow_pickle=True)["data"].item()
    data["TS5"]["valid"] = data["TS5"]["valid"] * 2
    save_npz(path / "data_test_3dhp.npz", data=data)
    with pytest.raises(DataError, match="data_test_3dhp.npz: TS5: valid holds values other than 0 and 1"):
        read_test(path / "data_test_3dhp.npz")


def test_unknown_test_sequence(tmp_path):
    write_mpi3dhp_test(tmp_path / "data_test_3dhp.npz", {"TS7": 3})
    with pytest.raises(DataError, match="data_test_3dhp.npz: unknown test sequence 'TS7'"):
        read_test(tmp_path / "data_test_3dhp.npz")


def test_bad_sequence_key(tmp_path):
    save_npz(tmp_path / "t.npz", data={"S1_Seq1": [{}, 25]})
    with pytest.raises(DataError, match="t.npz: sequence key 'S1_Seq1'"):
        read_train(tmp_path / "t.npz")


def test_unknown_or_absent_subject(root):
    path, *_ = root
    with pytest.raises(DataError, match="data_train_3dhp.npz: unknown subjects \\['S9'\\]"):
        read_mpi3dhp(path, subjects=["S9"])
    with pytest.raises(DataError, match="data_train_3dhp.npz: subjects \\['S3'\\] are not in the file"):
        read_mpi3dhp(path, subjects=["S1", "S3"])
