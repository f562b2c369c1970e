"""Per-row KV interval masks (``q_ranges``) for interleaved text and images.

A mask is an int32 tensor ``[B, Lq, 2]``: row i of batch b sees the global KV rows
``[begin, end)``. The functions here build the mask of the whole (global) text
sequence from global lengths; under a communicator each rank passes its own rows,
``ranges[:, q_start:q_stop]`` (the KV coordinates stay global). Visual tokens are laid out image after image, so the masks that
multimodal LLMs use are single intervals:

* ``"all_previous"`` (Llama 3.2 Vision): a text token sees every image before it.
* ``"latest"`` (OpenFlamingo): a text token sees only the latest image before it.

A text token with no image before it gets the empty interval ``[0, 0)``.
"""

from __future__ import annotations

import torch

STYLES = ("all_previous", "latest")


def image_bounds(kv_len: int, num_images: int) -> torch.Tensor:
    """Cumulative KV offsets ``[num_images + 1]`` of images split as evenly as possible."""
    if num_images < 1 or num_images > max(kv_len, 1):
        raise ValueError(f"num_images must be in [1, kv_len={kv_len}], got {num_images}")
    return torch.div(torch.arange(num_images + 1) * kv_len, num_images, rounding_mode="floor")


def ranges_from_images(images_before: torch.Tensor, bounds: torch.Tensor, style: str) -> torch.Tensor:
    """Build ``q_ranges`` from how many images precede each text token.

    images_before: int ``[B, Lq]`` in ``[0, num_images]``; bounds: ``[num_images + 1]``.
    """
    if style not in STYLES:
        raise ValueError(f"mask style must be one of {STYLES}, got {style!r}")
    n = images_before.long()
    num_images = bounds.numel() - 1
    if n.numel() and (int(n.min()) < 0 or int(n.max()) > num_images):
        raise ValueError(f"images_before must be in [0, {num_images}]")
    end = bounds[n]
    if style == "all_previous":
        begin = torch.zeros_like(end)
    else:
        begin = bounds[(n - 1).clamp(min=0)]
    begin = torch.where(n == 0, torch.zeros_like(begin), begin)
    return torch.stack([begin, end], dim=-1).to(torch.int32).contiguous()


def interleaved_ranges(batch: int, q_len: int, kv_len: int, num_images: int, style: str,
                       lead: int = 1) -> torch.Tensor:
    """The mask of a synthetic interleaved document, ``int32 [batch, q_len, 2]``.

    ``q_len`` and ``kv_len`` are **global** lengths (the whole text and the whole
    visual sequence, all ranks together); the result is the global mask, of which
    each rank passes its own rows. The visual tokens form ``num_images`` images of
    (nearly) equal size laid out one after another; the text rows are spread evenly
    over them, and the first ``lead`` rows come before any image (empty intervals:
    O = 0). ``style``: ``"all_previous"`` (a row sees every image before it, Llama 3.2
    Vision) or ``"latest"`` (only the latest, OpenFlamingo). Raises ValueError for an
    unknown style or ``num_images`` outside ``[1, kv_len]``.
    """
    bounds = image_bounds(kv_len, num_images)
    rows = torch.arange(q_len)
    images_before = torch.where(
        rows < lead, torch.zeros_like(rows),
        1 + torch.div((rows - lead) * num_images, max(q_len - lead, 1), rounding_mode="floor"))
    images_before = images_before.clamp(max=num_images)
    return ranges_from_images(images_before.expand(batch, q_len), bounds, style)
