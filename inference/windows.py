"""Sliding context windows over a long video and the position weights used to blend their overlaps.

The motion modules were trained on clips of a fixed length, so a long video is denoised as overlapping windows of
that length; at every step each frame's prediction is the weighted mean of the windows that contain it. Frames near
a window's centre saw context on both sides, so they get more weight than frames at its edges; a flat average lets
an edge frame (which saw only one side) pull its neighbour's prediction, which shows as a jolt at window borders.
"""
from __future__ import annotations

import torch


def context_windows(num_frames: int, context_frames: int, overlap: int, closed_loop: bool = False) -> list[list[int]]:
    """Frame indices of each window, covering every frame at least once.

    Windows start every `context_frames - overlap` frames; the last one is moved back so it ends at the last frame
    (no wrap-around). With `closed_loop` the windows keep the same stride past the end and wrap to the first frames
    (for looping videos), so the end also blends into the start.
    """
    if num_frames < 1:
        raise ValueError(f"need at least one frame, got {num_frames}")
    if context_frames < 1:
        raise ValueError(f"context_frames must be >= 1, got {context_frames}")
    if not 0 <= overlap < context_frames:
        raise ValueError(f"context_overlap must be in [0, context_frames), got {overlap} for {context_frames}")
    if num_frames <= context_frames:
        return [list(range(num_frames))]
    stride = context_frames - overlap
    if closed_loop:
        return [[(start + i) % num_frames for i in range(context_frames)] for start in range(0, num_frames, stride)]
    starts = list(range(0, num_frames - context_frames + 1, stride))
    if starts[-1] + context_frames < num_frames:
        starts.append(num_frames - context_frames)
    return [list(range(start, start + context_frames)) for start in starts]


def position_weights(length: int) -> torch.Tensor:
    """Pyramid weights (length,): 1, 2, ... at the edges rising to the centre; all positive."""
    position = torch.arange(length, dtype=torch.float64)
    return torch.minimum(position + 1, length - position)
