"""HDF5 feature files: format, per-rank shard reads, and a synthetic writer.

Format (one file)::

    visual    float [B, Lkv, Dv]  or  [B, frames, tokens_per_frame, Dv]  (flattened frame-major)
    text      float [B, Lq, Dt]
    q_ranges  int   [B, Lq, 2]    optional; per text row the visible global KV rows [begin, end)
    attrs     format, format_version, model, frames, tokens_per_frame, mask_style, num_images, ...

Both sequences are sharded contiguously in rank order (DESIGN.md, Sharding), each
independently: rank r reads visual rows ``[off_r, off_r + L_r)`` and its own text
rows. A rank reads only its hyperslab, a bounded number of rows at a time, so a
file far larger than memory is fine as long as one shard fits.

Stored types: ``visual`` and ``text`` may be IEEE float16, float32 or float64 and
``q_ranges`` any integer type, in either byte order; HDF5 converts them on read
into the requested dtype (bf16: read as float32, then rounded by torch) and int32.
Other types (integer or complex features, long double, float ranges) raise
``FeatureFileError`` naming the dataset and its type.

Every check runs on every rank and the ranks agree on the outcome
(``agree_on_errors``), so a bad file gives the same error everywhere instead of
one rank failing while the others wait in a collective.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence, TypeVar

import h5py
import numpy as np
import torch

from . import masks
from .progress import Progress
from .sharding import even_counts

FORMAT = "lvxattn-features"
FORMAT_VERSION = 1
VISUAL, TEXT, Q_RANGES = "visual", "text", "q_ranges"
MASK_STYLES = ("none",) + masks.STYLES
FILE_DTYPES = {"fp32": np.float32, "fp16": np.float16}
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_CHUNK_BYTES = 32 << 20

T = TypeVar("T")


class FeatureFileError(ValueError):
    """A feature file that is missing, malformed, or disagrees with what was asked for."""


# ---------------------------------------------------------------------------
# Collective error agreement


def agree_on_errors(comm, action: Callable[[], T], what: str = "") -> T:
    """Run ``action`` on every rank; if it raises on any rank, raise on all of them.

    The raised ``FeatureFileError`` names each failing rank and its message. With
    ``comm=None`` (one process) exceptions are converted the same way.
    """
    result: Any = None
    message = None
    try:
        result = action()
    except Exception as exc:  # noqa: BLE001 - every failure must reach the other ranks
        message = str(exc) if isinstance(exc, FeatureFileError) else f"{type(exc).__name__}: {exc}"
    messages = [message] if comm is None else comm.allgather(message)
    failed = [(rank, m) for rank, m in enumerate(messages) if m is not None]
    if failed:
        distinct = sorted({m for _, m in failed})
        if len(distinct) == 1 and len(failed) == len(messages):
            text = distinct[0]
        else:
            text = "; ".join(f"rank {rank}: {m}" for rank, m in failed)
        raise FeatureFileError(f"{what}: {text}" if what else text)
    return result


# ---------------------------------------------------------------------------
# Sharding


def shard_offsets(total: int, parts: int, counts: Sequence[int] | None = None,
                  name: str = "split") -> list[tuple[int, int]]:
    """``(offset, length)`` of every rank's contiguous piece; ``counts`` overrides the even split.
    ``name`` is how errors call ``counts`` (``visual_split``, ``text_split``)."""
    if counts is None:
        counts = even_counts(total, parts)
    counts = [int(c) for c in counts]
    if len(counts) != parts:
        raise FeatureFileError(f"{name} {counts} needs one row count per rank: {len(counts)} given, {parts} ranks")
    if any(c < 0 for c in counts) or sum(counts) != total:
        raise FeatureFileError(f"{name} {counts} must be non-negative and sum to the length {total}")
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    return [(int(o), c) for o, c in zip(offsets, counts)]


# ---------------------------------------------------------------------------
# Metadata and validation


@dataclass(frozen=True)
class FeatureMeta:
    """What a feature file holds, read from its dataset shapes and attributes."""

    path: str
    batch: int
    visual_len: int
    text_len: int
    visual_dim: int
    text_dim: int
    frames: int | None
    tokens_per_frame: int | None
    visual_dtype: np.dtype
    text_dtype: np.dtype
    has_q_ranges: bool
    visual_ndim: int = 3
    attrs: dict = field(default_factory=dict)

    @property
    def frames_layout(self) -> bool:
        """True when ``visual`` is stored as ``[B, frames, tokens, Dv]``."""
        return self.visual_ndim == 4


FEATURE_ITEMSIZES = (2, 4, 8)  # IEEE float16, float32, float64


def type_name(dtype: np.dtype) -> str:
    """A stored type for messages: ``float32 big-endian``, ``int8``, ``complex64 little-endian``."""
    dtype = np.dtype(dtype)
    if dtype.byteorder == "|" or dtype.itemsize == 1 or dtype.fields is not None:
        return str(dtype)
    big = dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big")
    return f"{dtype.name} {'big' if big else 'little'}-endian"


def _read_type(dtype: torch.dtype) -> np.dtype:
    """The native numpy type HDF5 converts features to on read for a requested torch dtype."""
    return np.dtype(np.float16) if dtype == torch.float16 else np.dtype(np.float32)


def _open(path: str) -> h5py.File:
    if not os.path.exists(path):
        raise FeatureFileError(f"feature file not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise FeatureFileError(f"cannot open {path} as HDF5: {exc}") from None


def _dataset(f: h5py.File, name: str, path: str) -> h5py.Dataset:
    if name not in f:
        found = ", ".join(sorted(f.keys())) or "nothing"
        raise FeatureFileError(f"{path}: dataset '{name}' is missing (found: {found})")
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise FeatureFileError(f"{path}: '{name}' is a group, expected a dataset")
    return obj


def _attr_int(attrs, name: str) -> int | None:
    if name not in attrs:
        return None
    value = attrs[name]
    try:
        return int(value)
    except (TypeError, ValueError):
        raise FeatureFileError(f"attribute '{name}' should be an integer, got {value!r}") from None


def _plain_attrs(attrs) -> dict:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, bytes):
            value = value.decode(errors="replace")
        out[key] = value
    return out


def _meta_from_file(f: h5py.File, path: str) -> FeatureMeta:
    visual = _dataset(f, VISUAL, path)
    text = _dataset(f, TEXT, path)
    if visual.ndim not in (3, 4):
        raise FeatureFileError(f"{path}: '{VISUAL}' has shape {visual.shape}; expected "
                               "[B, Lkv, Dv] or [B, frames, tokens_per_frame, Dv]")
    if text.ndim != 3:
        raise FeatureFileError(f"{path}: '{TEXT}' has shape {text.shape}; expected [B, Lq, Dt]")
    for name, ds in ((VISUAL, visual), (TEXT, text)):
        if ds.dtype.kind != "f" or ds.dtype.itemsize not in FEATURE_ITEMSIZES:
            raise FeatureFileError(f"{path}: '{name}' has type {type_name(ds.dtype)}; expected floating point "
                                   "(float16, float32 or float64, either byte order)")
    batch = visual.shape[0]
    if text.shape[0] != batch:
        raise FeatureFileError(f"{path}: batch sizes disagree: '{VISUAL}' has {batch}, "
                               f"'{TEXT}' has {text.shape[0]}")
    frames = _attr_int(f.attrs, "frames")
    tokens = _attr_int(f.attrs, "tokens_per_frame")
    if visual.ndim == 4:
        if frames is not None and frames != visual.shape[1]:
            raise FeatureFileError(f"{path}: attribute frames={frames} but '{VISUAL}' has "
                                   f"{visual.shape[1]} frames (shape {visual.shape})")
        if tokens is not None and tokens != visual.shape[2]:
            raise FeatureFileError(f"{path}: attribute tokens_per_frame={tokens} but '{VISUAL}' has "
                                   f"{visual.shape[2]} tokens per frame (shape {visual.shape})")
        frames, tokens = visual.shape[1], visual.shape[2]
        visual_len = frames * tokens
    else:
        visual_len = visual.shape[1]
        if frames is not None and tokens is not None and frames * tokens != visual_len:
            raise FeatureFileError(f"{path}: attributes frames={frames} x tokens_per_frame={tokens} "
                                   f"!= visual length {visual_len}")
    text_len = text.shape[1]
    has_q_ranges = Q_RANGES in f
    if has_q_ranges:
        q_ranges = _dataset(f, Q_RANGES, path)
        if tuple(q_ranges.shape) != (batch, text_len, 2):
            raise FeatureFileError(f"{path}: '{Q_RANGES}' has shape {q_ranges.shape}; expected "
                                   f"[B, Lq, 2] = {[batch, text_len, 2]}")
        if q_ranges.dtype.kind not in "iu":
            raise FeatureFileError(f"{path}: '{Q_RANGES}' has type {type_name(q_ranges.dtype)}; expected "
                                   "integers (any width, either byte order)")
    if visual_len < 1 or text_len < 1 or batch < 1:
        raise FeatureFileError(f"{path}: empty sequences (B={batch}, Lkv={visual_len}, Lq={text_len})")
    meta = FeatureMeta(path=path, batch=batch, visual_len=visual_len, text_len=text_len,
                       visual_dim=visual.shape[-1], text_dim=text.shape[-1], frames=frames,
                       tokens_per_frame=tokens, visual_dtype=visual.dtype, text_dtype=text.dtype,
                       has_q_ranges=has_q_ranges, visual_ndim=visual.ndim, attrs=_plain_attrs(f.attrs))
    return meta


def read_meta(path: str) -> FeatureMeta:
    """Validate the file's layout and return its shapes; raises ``FeatureFileError``."""
    path = os.fspath(path)
    with _open(path) as f:
        return _meta_from_file(f, path)


def check_expected(meta: FeatureMeta, expect: dict[str, int | None]) -> None:
    """Raise if a field of ``meta`` (e.g. ``visual_dim``) differs from the value asked for."""
    for name, wanted in expect.items():
        if wanted is None:
            continue
        have = getattr(meta, name)
        if have != wanted:
            flag = "--" + name.replace("_", "-")
            raise FeatureFileError(f"{meta.path}: {name} is {have} in the file but {wanted} "
                                   f"was requested ({flag})")


# ---------------------------------------------------------------------------
# Shard reads


def _rows_per_chunk(row_bytes: int, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // max(row_bytes, 1))


def frame_pieces(start: int, stop: int, tokens: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Split flat visual rows ``[start, stop)`` of a ``[frames, tokens]`` layout into hyperslabs.

    Yields ``(row, frame_begin, frame_end, token_begin, token_end)``: either a run of
    whole frames (``token_begin=0, token_end=tokens``) or part of one frame.
    """
    row = start
    while row < stop:
        frame, token = divmod(row, tokens)
        whole = (stop - row) // tokens if token == 0 else 0
        if whole:
            yield row, frame, frame + whole, 0, tokens
            row += whole * tokens
        else:
            token_end = min(tokens, token + stop - row)
            yield row, frame, frame + 1, token, token_end
            row += token_end - token


def _read_rows(ds: h5py.Dataset, start: int, stop: int, out: torch.Tensor, chunk_bytes: int) -> None:
    """Copy sequence rows ``[start, stop)`` of a ``[B, L, D]`` or ``[B, F, T, D]`` dataset into ``out``,
    converted by HDF5 on read (byte order, precision) to ``out``'s dtype or, for bf16, float32."""
    batch, dim = ds.shape[0], ds.shape[-1]
    read_type = _read_type(out.dtype)
    step = _rows_per_chunk(batch * dim * max(ds.dtype.itemsize, read_type.itemsize), chunk_bytes)
    src = ds.astype(read_type)
    for lo in range(start, stop, step):
        hi = min(lo + step, stop)
        if ds.ndim == 3:
            pieces = [(lo, src[:, lo:hi, :])]
        else:
            tokens = ds.shape[2]
            pieces = [(row, src[:, f0:f1, t0:t1, :].reshape(batch, -1, dim))
                      for row, f0, f1, t0, t1 in frame_pieces(lo, hi, tokens)]
        for row, block in pieces:
            dst = out[:, row - start: row - start + block.shape[1]]
            dst.copy_(torch.from_numpy(np.ascontiguousarray(block)))


@dataclass
class Shard:
    """This rank's rows of a feature file (torch tensors on the CPU)."""

    visual: torch.Tensor            # [B, Lkv_local, Dv]
    text: torch.Tensor              # [B, Lq_local, Dt]
    q_ranges: torch.Tensor | None   # int32 [B, Lq_local, 2], global visual rows
    visual_offset: int
    text_offset: int
    visual_counts: list[int]        # rows of every rank, rank order
    text_counts: list[int]
    meta: FeatureMeta


def read_rank_shard(path: str, rank: int, size: int, visual_split: Sequence[int] | None = None,
                    text_split: Sequence[int] | None = None, dtype: torch.dtype = torch.float32,
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES, expect: dict | None = None) -> Shard:
    """Rank ``rank`` of ``size``'s shard; not collective (``load_shard`` is the collective form)."""
    path = os.fspath(path)
    with _open(path) as f:
        meta = _meta_from_file(f, path)
        check_expected(meta, expect or {})
        visual_pieces = shard_offsets(meta.visual_len, size, visual_split, "visual_split")
        text_pieces = shard_offsets(meta.text_len, size, text_split, "text_split")
        v_off, v_len = visual_pieces[rank]
        t_off, t_len = text_pieces[rank]
        visual = torch.empty(meta.batch, v_len, meta.visual_dim, dtype=dtype)
        text = torch.empty(meta.batch, t_len, meta.text_dim, dtype=dtype)
        _read_rows(f[VISUAL], v_off, v_off + v_len, visual, chunk_bytes)
        _read_rows(f[TEXT], t_off, t_off + t_len, text, chunk_bytes)
        q_ranges = None
        if meta.has_q_ranges:
            ds = f[Q_RANGES]
            # Every integer type converts exactly to int64, or uint64 for unsigned 64-bit ones.
            wide = np.uint64 if ds.dtype.kind == "u" and ds.dtype.itemsize == 8 else np.int64
            raw = ds.astype(wide)[:, t_off:t_off + t_len, :]
            limit = min(meta.visual_len, np.iinfo(np.int32).max)
            bad = (raw[..., 0] > raw[..., 1]) | (raw[..., 1] > limit)
            if wide == np.int64:
                bad |= raw[..., 0] < 0
            if bad.any():
                b, i = np.argwhere(bad)[0]
                raise FeatureFileError(
                    f"{path}: '{Q_RANGES}' ({type_name(ds.dtype)})[{b}, {t_off + i}] = {raw[b, i].tolist()} "
                    f"is not an interval inside [0, {limit}]")
            q_ranges = torch.from_numpy(raw.astype(np.int32)).contiguous()
    return Shard(visual=visual, text=text, q_ranges=q_ranges, visual_offset=v_off, text_offset=t_off,
                 visual_counts=[n for _, n in visual_pieces], text_counts=[n for _, n in text_pieces],
                 meta=meta)


def load_shard(path: str, comm=None, *, visual_split: Sequence[int] | None = None,
               text_split: Sequence[int] | None = None, dtype: torch.dtype = torch.float32,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES, expect: dict[str, int | None] | None = None) -> Shard:
    """Read this rank's contiguous shard of ``visual``, ``text`` and ``q_ranges``.

    Collective over ``comm`` (mpi4py communicator; None = one process owning everything):
    every rank validates the file and any failure is raised on all ranks as
    ``FeatureFileError``. ``visual_split``/``text_split`` give rows per rank explicitly
    (default: as even as possible, first ranks one more). ``expect`` maps FeatureMeta
    fields (``visual_dim``, ``text_dim``, ``batch``, ...) to required values.
    Reads at most ``chunk_bytes`` of file rows at a time.
    """
    rank = 0 if comm is None else comm.Get_rank()
    size = 1 if comm is None else comm.Get_size()
    return agree_on_errors(
        comm, lambda: read_rank_shard(os.fspath(path), rank, size, visual_split, text_split, dtype,
                                  chunk_bytes, dict(expect or {})),
        what="reading features")


# ---------------------------------------------------------------------------
# Synthetic files


def write_synthetic(path: str, *, batch: int, text_len: int, text_dim: int, visual_dim: int,
                    visual_len: int | None = None, frames: int | None = None,
                    tokens_per_frame: int | None = None, dtype: str = "fp32",
                    mask_style: str = "all_previous", num_images: int | None = None, seed: int = 0,
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES, progress: bool = True,
                    model: str = "synthetic") -> FeatureMeta:
    """Write a feature file of standard-normal features, a bounded chunk at a time.

    Give either ``visual_len`` (stored ``[B, Lkv, Dv]``) or ``frames`` and
    ``tokens_per_frame`` (stored ``[B, frames, tokens, Dv]``). ``mask_style`` is one
    of ``MASK_STYLES``; with a mask, text rows are spread over ``num_images`` images
    (default: one image per frame, else 1) and the first text row sees no image.
    """
    if dtype not in FILE_DTYPES:
        raise FeatureFileError(f"file dtype must be one of {sorted(FILE_DTYPES)}, got {dtype!r}")
    if mask_style not in MASK_STYLES:
        raise FeatureFileError(f"mask style must be one of {MASK_STYLES}, got {mask_style!r}")
    frames_layout = frames is not None or tokens_per_frame is not None
    if frames_layout:
        if frames is None or tokens_per_frame is None:
            raise FeatureFileError("give both frames and tokens_per_frame")
        if visual_len is not None and visual_len != frames * tokens_per_frame:
            raise FeatureFileError(f"visual_len={visual_len} != frames x tokens_per_frame")
        visual_len = frames * tokens_per_frame
        visual_shape: tuple[int, ...] = (batch, frames, tokens_per_frame, visual_dim)
    else:
        if visual_len is None:
            raise FeatureFileError("give visual_len, or frames and tokens_per_frame")
        visual_shape = (batch, visual_len, visual_dim)
    for name, value in (("batch", batch), ("visual_len", visual_len), ("text_len", text_len),
                        ("visual_dim", visual_dim), ("text_dim", text_dim)):
        if value < 1:
            raise FeatureFileError(f"{name} must be >= 1, got {value}")
    if num_images is None:
        num_images = frames if frames_layout else 1
    np_dtype = FILE_DTYPES[dtype]
    itemsize = np.dtype(np_dtype).itemsize
    total_mb = batch * (visual_len * visual_dim + text_len * text_dim) * itemsize / 2**20
    rng = np.random.default_rng(seed)

    path = os.fspath(path)
    with h5py.File(path, "w") as f, Progress(total_mb, f"writing {os.path.basename(path)}", unit="MB",
                                             enabled=progress) as bar:
        attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model,
                 "mask_style": mask_style, "num_images": num_images, "seed": seed,
                 "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        if frames_layout:
            attrs.update(frames=frames, tokens_per_frame=tokens_per_frame)
        f.attrs.update(attrs)
        for name, shape, dim in ((VISUAL, visual_shape, visual_dim), (TEXT, (batch, text_len, text_dim), text_dim)):
            ds = f.create_dataset(name, shape=shape, dtype=np_dtype)
            length = shape[1]
            row_elems = batch * dim * (shape[2] if len(shape) == 4 else 1)
            step = _rows_per_chunk(row_elems * itemsize, chunk_bytes)
            for lo in range(0, length, step):
                hi = min(lo + step, length)
                block = rng.standard_normal((batch, hi - lo) + shape[2:], dtype=np.float32)
                ds[:, lo:hi] = block.astype(np_dtype, copy=False)
                bar.update(block.size * itemsize / 2**20)
        if mask_style != "none":
            ranges = masks.interleaved_ranges(batch, text_len, visual_len, num_images, mask_style)
            f.create_dataset(Q_RANGES, data=ranges.numpy())
        meta = _meta_from_file(f, path)
    return meta
