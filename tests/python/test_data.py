"""HDF5 feature files: every rank's shard equals its slice of the file; bad files fail clearly.

Single-process tests read each rank's shard with ``read_rank_shard`` for P in 1..4;
the ``mpi`` tests run the collective ``load_shard`` under
``mpirun -n N python -m pytest --with-mpi tests/python/test_data.py``.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from lvxattn import data, masks


def full_arrays(path):
    """The whole (small) file, flattened, read independently of the code under test."""
    with h5py.File(path, "r") as f:
        visual = f["visual"][...]
        if visual.ndim == 4:
            visual = visual.reshape(visual.shape[0], -1, visual.shape[-1])
        text = f["text"][...]
        q_ranges = f["q_ranges"][...] if "q_ranges" in f else None
    return visual, text, q_ranges


def assert_shards_tile_file(path, size, dtype=torch.float32, visual_split=None, text_split=None,
                            chunk_bytes=64):
    visual, text, q_ranges = full_arrays(path)
    v_next = t_next = 0
    for rank in range(size):
        shard = data.read_rank_shard(path, rank, size, visual_split=visual_split, text_split=text_split,
                                     dtype=dtype, chunk_bytes=chunk_bytes)
        assert shard.visual.dtype == dtype and shard.text.dtype == dtype
        assert shard.visual_offset == v_next and shard.text_offset == t_next
        v_len, t_len = shard.visual.shape[1], shard.text.shape[1]
        assert v_len == shard.visual_counts[rank] and t_len == shard.text_counts[rank]
        want_v = torch.from_numpy(visual[:, v_next:v_next + v_len].astype(np.float32)).to(dtype)
        want_t = torch.from_numpy(text[:, t_next:t_next + t_len].astype(np.float32)).to(dtype)
        assert torch.equal(shard.visual, want_v)
        assert torch.equal(shard.text, want_t)
        if q_ranges is None:
            assert shard.q_ranges is None
        else:
            assert shard.q_ranges.dtype == torch.int32
            assert np.array_equal(shard.q_ranges.numpy(), q_ranges[:, t_next:t_next + t_len])
        v_next += v_len
        t_next += t_len
    assert v_next == visual.shape[1] and t_next == text.shape[1]


# ---------------------------------------------------------------------------
# Splits


@given(total=st.integers(0, 200), parts=st.integers(1, 9))
def test_even_counts_are_balanced_first_ranks_larger(total, parts):
    counts = data.even_counts(total, parts)
    assert sum(counts) == total and len(counts) == parts
    assert max(counts) - min(counts) <= 1
    assert counts == sorted(counts, reverse=True)


def test_shard_offsets_explicit_split_and_errors():
    assert data.shard_offsets(10, 3, [0, 7, 3]) == [(0, 0), (0, 7), (7, 3)]
    with pytest.raises(data.FeatureFileError, match="sum to the length 10"):
        data.shard_offsets(10, 3, [1, 2, 3])
    with pytest.raises(data.FeatureFileError, match="one row count per rank: 2 given, 3 ranks"):
        data.shard_offsets(10, 3, [5, 5])


@settings(max_examples=60, deadline=None)
@given(tokens=st.integers(1, 7), start=st.integers(0, 40), length=st.integers(0, 40))
def test_frame_pieces_cover_rows_in_order(tokens, start, length):
    rows = []
    for row, f0, f1, t0, t1 in data.frame_pieces(start, start + length, tokens):
        assert row == start + len(rows)
        assert f1 == f0 + 1 or (t0, t1) == (0, tokens)
        rows += [f * tokens + t for f in range(f0, f1) for t in range(t0, t1)]
    assert rows == list(range(start, start + length))


# ---------------------------------------------------------------------------
# Shards equal slices of the file


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("layout", ["flat", "frames"])
def test_shards_equal_file_slices(tmp_path, size, layout):
    path = tmp_path / "f.h5"
    shape = dict(visual_len=13) if layout == "flat" else dict(frames=3, tokens_per_frame=5)
    data.write_synthetic(path, batch=2, text_len=6, text_dim=3, visual_dim=4, progress=False,
                         mask_style="latest", **shape)
    # Uneven: 13 or 15 visual rows and 6 text rows over up to 4 ranks; tiny chunks
    # force many partial-frame hyperslab reads.
    assert_shards_tile_file(path, size)


def test_frames_layout_flattens_frame_major(tmp_path):
    path = tmp_path / "f.h5"
    values = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
    with h5py.File(path, "w") as f:
        f["visual"] = values
        f["text"] = np.zeros((2, 3, 5), np.float32)
        f.attrs["frames"], f.attrs["tokens_per_frame"] = 3, 4
    shard = data.read_rank_shard(path, 1, 2, chunk_bytes=1)
    # Flat row r of batch b is frame r // 4, token r % 4; rank 1 owns rows 6..11.
    for b in range(2):
        for r in range(6, 12):
            assert torch.equal(shard.visual[b, r - 6], torch.from_numpy(values[b, r // 4, r % 4]))
    assert data.read_meta(path).frames_layout


def test_explicit_split_with_empty_rank_and_dtype_conversion(tmp_path):
    path = tmp_path / "f.h5"
    data.write_synthetic(path, batch=1, visual_len=9, text_len=5, text_dim=2, visual_dim=3,
                         dtype="fp16", mask_style="none", progress=False)
    assert_shards_tile_file(path, 3, dtype=torch.bfloat16, visual_split=[4, 0, 5], text_split=[0, 5, 0])
    assert_shards_tile_file(path, 2, dtype=torch.float32)


def test_reads_only_own_rows_in_bounded_chunks(tmp_path, monkeypatch):
    path = tmp_path / "f.h5"
    data.write_synthetic(path, batch=2, visual_len=40, text_len=4, text_dim=2, visual_dim=8,
                         mask_style="none", progress=False)
    reads = []
    original = h5py.Dataset.__getitem__

    def recording_getitem(self, key, **kwargs):
        block = original(self, key, **kwargs)
        reads.append((self.name, key, block.shape))
        return block

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording_getitem)
    row_bytes = 2 * 8 * 4
    shard = data.read_rank_shard(path, 1, 3, chunk_bytes=3 * row_bytes)  # rank 1: rows 14..26
    visual_reads = [(key, shape) for name, key, shape in reads if name == "/visual"]
    assert len(visual_reads) == 5  # 13 rows, 3 at a time
    for key, shape in visual_reads:
        rows = key[1]
        assert 14 <= rows.start < rows.stop <= 27 and shape[1] <= 3
    assert shard.visual.shape == (2, 13, 8)


def test_writer_mask_and_attributes(tmp_path):
    path = tmp_path / "f.h5"
    meta = data.write_synthetic(path, batch=2, frames=4, tokens_per_frame=3, text_len=9, text_dim=2,
                                visual_dim=2, mask_style="all_previous", progress=False)
    assert (meta.visual_len, meta.frames, meta.tokens_per_frame, meta.has_q_ranges) == (12, 4, 3, True)
    assert meta.attrs["mask_style"] == "all_previous" and meta.attrs["num_images"] == 4
    _, _, q_ranges = full_arrays(path)
    want = masks.interleaved_ranges(2, 9, 12, 4, "all_previous").numpy()
    assert np.array_equal(q_ranges, want)
    assert q_ranges[0, 0].tolist() == [0, 0] and q_ranges[0, -1].tolist() == [0, 12]


def test_writer_progress_bar_goes_to_given_stream(tmp_path, capsys):
    data.write_synthetic(tmp_path / "f.h5", batch=1, visual_len=4, text_len=2, text_dim=2,
                         visual_dim=2, progress=True)
    err = capsys.readouterr().err
    assert "writing f.h5" in err and "|" + "#" * 30 + "|" in err


# ---------------------------------------------------------------------------
# Stored types: byte order and width are HDF5's to convert


def write_typed(path, visual_type, text_type, ranges_type, layout="flat", seed=0):
    """A small file whose datasets are stored in the given numpy types (e.g. '>f4', '<u2')."""
    rng = np.random.default_rng(seed)
    shape = (2, 12, 4) if layout == "flat" else (2, 3, 4, 4)
    ranges = masks.interleaved_ranges(2, 5, 12, 3, "latest").numpy()
    with h5py.File(path, "w") as f:
        f.create_dataset("visual", data=rng.standard_normal(shape).astype(visual_type))
        f.create_dataset("text", data=rng.standard_normal((2, 5, 3)).astype(text_type))
        if ranges_type is not None:
            f.create_dataset("q_ranges", data=ranges.astype(ranges_type))
        if layout == "frames":
            f.attrs["frames"], f.attrs["tokens_per_frame"] = 3, 4


def expected_features(array, dtype):
    """The stored values as the requested dtype, converted by numpy (fp16 directly, the
    others through float32)."""
    array = array.reshape(array.shape[0], -1, array.shape[-1])
    if dtype == torch.float16:
        return torch.from_numpy(array.astype(np.float16))
    return torch.from_numpy(array.astype(np.float32)).to(dtype)


FLOAT_TYPES = ["<f2", ">f2", "<f4", ">f4", "<f8", ">f8"]
INT_TYPES = ["i1", "u1", "<i2", ">u2", ">i4", "<u4", ">i8", "<i8", ">u8"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", range(len(INT_TYPES)))
def test_every_float_width_and_integer_type_loads_in_either_byte_order(tmp_path, n, dtype):
    visual_type, text_type = FLOAT_TYPES[n % 6], FLOAT_TYPES[(n + 3) % 6]
    path = tmp_path / "typed.h5"
    write_typed(path, visual_type, text_type, INT_TYPES[n], layout="frames" if n % 2 else "flat", seed=n)
    with h5py.File(path, "r") as f:
        visual, text, ranges = f["visual"][...], f["text"][...], f["q_ranges"][...]
    for size in (1, 2, 3):
        for rank in range(size):
            shard = data.read_rank_shard(path, rank, size, dtype=dtype, chunk_bytes=40)
            v0, t0 = shard.visual_offset, shard.text_offset
            v1, t1 = v0 + shard.visual.shape[1], t0 + shard.text.shape[1]
            assert shard.visual.dtype == dtype and shard.text.dtype == dtype
            assert torch.equal(shard.visual, expected_features(visual, dtype)[:, v0:v1])
            assert torch.equal(shard.text, expected_features(text, dtype)[:, t0:t1])
            assert shard.q_ranges.dtype == torch.int32
            assert np.array_equal(shard.q_ranges.numpy(), ranges[:, t0:t1].astype(np.int64))


BAD_TYPES = [
    (dict(visual="<i2"), "'visual' has type int16 little-endian; expected floating point"),
    (dict(visual=">i4"), "'visual' has type int32 big-endian; expected floating point"),
    (dict(text="<c8"), "'text' has type complex64 little-endian; expected floating point"),
    (dict(visual=np.longdouble), f"'visual' has type {np.dtype(np.longdouble).name} little-endian"),
    (dict(q_ranges=">f4"), "'q_ranges' has type float32 big-endian; expected integers"),
    (dict(q_ranges="<f8"), "'q_ranges' has type float64 little-endian; expected integers"),
]


@pytest.mark.parametrize("types, message", BAD_TYPES)
def test_types_that_do_not_convert_exactly_raise_naming_dataset_and_type(tmp_path, types, message):
    path = tmp_path / "bad.h5"
    write_typed(path, types.get("visual", "<f4"), types.get("text", "<f4"), types.get("q_ranges", "<i4"))
    with pytest.raises(data.FeatureFileError, match=message):
        data.load_shard(path)


@pytest.mark.parametrize("ranges_type, value", [(">i8", 2**31 + 5), ("<u8", 2**63 + 1), (">u4", 2**32 - 1)])
def test_q_ranges_outside_int32_raise(tmp_path, ranges_type, value):
    path = tmp_path / "big.h5"
    write_typed(path, "<f4", "<f4", None)
    with h5py.File(path, "a") as f:
        ranges = np.zeros((2, 5, 2), dtype=ranges_type)
        ranges[1, 3] = (0, value)
        f.create_dataset("q_ranges", data=ranges)
    type_text = data.type_name(np.dtype(ranges_type))
    with pytest.raises(data.FeatureFileError, match=rf"'q_ranges' \({type_text}\)\[1, 3\] = \[0, {value}\]"):
        data.load_shard(path)


# ---------------------------------------------------------------------------
# Bad input


def write_raw(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name] = value


GOOD_VISUAL = np.zeros((2, 6, 4), np.float32)
GOOD_TEXT = np.zeros((2, 3, 5), np.float32)


@pytest.mark.parametrize("datasets, message", [
    (dict(text=GOOD_TEXT), "dataset 'visual' is missing"),
    (dict(visual=GOOD_VISUAL), "dataset 'text' is missing"),
    (dict(visual=np.zeros((2, 6), np.float32), text=GOOD_TEXT), "'visual' has shape"),
    (dict(visual=GOOD_VISUAL, text=np.zeros((2, 3), np.float32)), "'text' has shape"),
    (dict(visual=GOOD_VISUAL, text=np.zeros((3, 3, 5), np.float32)), "batch sizes disagree"),
    (dict(visual=GOOD_VISUAL.astype(np.int32), text=GOOD_TEXT), "expected floating point"),
    (dict(visual=GOOD_VISUAL, text=GOOD_TEXT, q_ranges=np.zeros((2, 3, 3), np.int32)), "'q_ranges' has shape"),
    (dict(visual=GOOD_VISUAL, text=GOOD_TEXT, q_ranges=np.full((2, 3, 2), 7, np.int32)), "not an interval"),
])
def test_malformed_files_raise_clear_errors(tmp_path, datasets, message):
    path = tmp_path / "bad.h5"
    write_raw(path, **datasets)
    with pytest.raises(data.FeatureFileError, match=message):
        data.load_shard(path)


def test_missing_file_not_hdf5_and_flag_mismatch(tmp_path):
    with pytest.raises(data.FeatureFileError, match="feature file not found"):
        data.load_shard(tmp_path / "nope.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(data.FeatureFileError, match="cannot open"):
        data.load_shard(tmp_path / "text.h5")
    path = tmp_path / "f.h5"
    write_raw(path, visual=GOOD_VISUAL, text=GOOD_TEXT)
    with pytest.raises(data.FeatureFileError, match=r"visual_dim is 4 in the file but 8 was requested \(--visual-dim\)"):
        data.load_shard(path, expect={"visual_dim": 8, "text_dim": 5})
    with h5py.File(path, "a") as f:
        f.attrs["frames"], f.attrs["tokens_per_frame"] = 4, 2
    with pytest.raises(data.FeatureFileError, match="frames=4 x tokens_per_frame=2"):
        data.read_meta(path)


# ---------------------------------------------------------------------------
# Collective reads under MPI


def shared_path(comm, tmp_path, name):
    return comm.bcast(str(tmp_path / name) if comm.rank == 0 else None, root=0)


@pytest.mark.mpi(min_size=2)
def test_mpi_load_shard_equals_file_slice(tmp_path):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    path = shared_path(comm, tmp_path, "f.h5")
    if comm.rank == 0:
        data.write_synthetic(path, batch=2, frames=5, tokens_per_frame=3, text_len=comm.size + 1,
                             text_dim=3, visual_dim=4, mask_style="latest", progress=False)
    comm.Barrier()
    shard = data.load_shard(path, comm, chunk_bytes=40)
    visual, text, q_ranges = full_arrays(path)
    offsets = data.shard_offsets(15, comm.size)
    assert (shard.visual_offset, shard.visual.shape[1]) == offsets[comm.rank]
    v0, t0 = shard.visual_offset, shard.text_offset
    assert np.array_equal(shard.visual.numpy(), visual[:, v0:v0 + shard.visual.shape[1]])
    assert np.array_equal(shard.text.numpy(), text[:, t0:t0 + shard.text.shape[1]])
    assert np.array_equal(shard.q_ranges.numpy(), q_ranges[:, t0:t0 + shard.text.shape[1]])
    assert sum(comm.allgather(shard.text.shape[1])) == comm.size + 1


@pytest.mark.mpi(min_size=2)
def test_mpi_error_on_one_rank_raises_on_every_rank(tmp_path):
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    path = shared_path(comm, tmp_path, "f.h5")
    if comm.rank == 0:
        data.write_synthetic(path, batch=1, visual_len=8, text_len=4, text_dim=2, visual_dim=2,
                             progress=False)
    comm.Barrier()
    mine = path if comm.rank != 1 else path + ".missing"
    with pytest.raises(data.FeatureFileError, match="rank 1: feature file not found"):
        data.load_shard(mine, comm)
    # An explicit split that does not sum to the length fails on all ranks alike.
    with pytest.raises(data.FeatureFileError, match="must be non-negative and sum"):
        data.load_shard(path, comm, visual_split=[1] * comm.size)


@pytest.mark.mpi(min_size=1)
def test_mpi_big_endian_files_load_at_one_two_and_three_ranks(tmp_path):
    """The issue's file: visual and text '>f4', q_ranges '>i4', through the collective load."""
    from mpi4py import MPI
    from dist_util import sub_comm
    world = MPI.COMM_WORLD
    path = shared_path(world, tmp_path, "big_endian.h5")
    if world.rank == 0:
        write_typed(path, ">f4", ">f4", ">i4", layout="frames")
    world.Barrier()
    with h5py.File(path, "r") as f:
        visual, text, ranges = f["visual"][...], f["text"][...], f["q_ranges"][...]
    for size in range(1, min(world.size, 3) + 1):
        with sub_comm(world, size) as comm:
            if comm is None:
                continue
            for dtype in (torch.float32, torch.bfloat16):
                shard = data.load_shard(path, comm, dtype=dtype, chunk_bytes=40)
                v0, t0 = shard.visual_offset, shard.text_offset
                assert torch.equal(shard.visual,
                                   expected_features(visual, dtype)[:, v0:v0 + shard.visual.shape[1]])
                assert torch.equal(shard.text, expected_features(text, dtype)[:, t0:t0 + shard.text.shape[1]])
                assert np.array_equal(shard.q_ranges.numpy(), ranges[:, t0:t0 + shard.text.shape[1]])
                assert sum(comm.allgather(shard.visual.shape[1])) == 12


@pytest.mark.mpi(min_size=1)
@pytest.mark.parametrize("types, message", BAD_TYPES[::2])
def test_mpi_bad_type_raises_on_every_rank(tmp_path, types, message):
    from mpi4py import MPI
    from dist_util import sub_comm
    world = MPI.COMM_WORLD
    path = shared_path(world, tmp_path, "bad_type.h5")
    if world.rank == 0:
        write_typed(path, types.get("visual", ">f4"), types.get("text", ">f4"), types.get("q_ranges", ">i4"))
    world.Barrier()
    for size in range(1, min(world.size, 3) + 1):
        with sub_comm(world, size) as comm:
            if comm is None:
                continue
            with pytest.raises(data.FeatureFileError, match=message):
                data.load_shard(path, comm)
