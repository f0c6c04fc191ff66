"""PyTorch fast paths through ``torchvision.ops`` (optional): RoIAlign and greedy NMS.

On ``KERAS_BACKEND=torch`` with torchvision importable, `ops.roi_align_ops.roi_align` and
`ops.poolers.multilevel_roi_align` ("auto" / "gather") and the NMS functions of `ops.nms`
("auto") call these functions first; each returns None when its fast path does not apply
(another backend, torchvision missing or without its compiled ops, meta tensors while Keras
traces a graph, a case where torchvision's semantics differ from ours), and the caller then
runs its portable `keras.ops` path. The results are the portable paths' (tested in
tests/portable/test_torch_fast_paths.py): the same selection and order for NMS, the same
values up to float rounding for RoIAlign. torchvision is imported inside the functions only:
it stays optional. Set `ENABLED = False` to force the portable paths (tests, debugging).

Conventions bridged here: our feature maps are NHWC and boxes ``(y1, x1, y2, x2)``;
torchvision's maps are NCHW, its RoIs ``[K, 5]`` ``(image, x1, y1, x2, y2)`` and its NMS boxes
``(x1, y1, x2, y2)``.
"""

from __future__ import annotations

import functools
from types import ModuleType

from keras_maskrcnn import backend

ENABLED = True  # False forces the portable keras.ops paths on PyTorch
_FAST_DTYPES = ("float32", "float16", "bfloat16")  # pooled in float32, cast back
_MAX_EXACT_RANK = 2**24  # float32 ranks are exact below this count of NMS candidates


@functools.cache
def _import_torchvision_ops() -> ModuleType | None:
    """torchvision.ops with its compiled kernels, or None (cached: one import attempt)."""
    try:
        import torchvision.extension
        import torchvision.ops
    except ImportError:
        return None
    return torchvision.ops if torchvision.extension._has_ops() else None


def torchvision_ops(*tensors) -> ModuleType | None:
    """torchvision.ops when a fast path may run on `tensors`: the Keras backend is PyTorch,
    `ENABLED`, torchvision (with its compiled ops) importable, and every tensor a concrete
    torch tensor (not a meta tensor of Keras' symbolic tracing); else None."""
    if not ENABLED or backend.name() != "torch":
        return None
    import torch

    if not all(isinstance(t, torch.Tensor) and t.device.type != "meta" for t in tensors):
        return None
    return _import_torchvision_ops()


# --------------------------------------------------------------------------- RoIAlign


def _pool_float(tv_ops: ModuleType, features, boxes, image, output_size, scale: float,
                sampling_ratio: int, aligned: bool):
    """torchvision RoIAlign of boxes [K, 4] (y1, x1, y2, x2) on NHWC `features` (float32)
    -> [K, ph, pw, C] float32. Non-finite boxes pool 0, as on the portable path."""
    import torch

    finite = torch.isfinite(boxes).all(dim=1)
    boxes = torch.where(finite[:, None], boxes, 0.0)
    rois = torch.cat([image[:, None].to(boxes.dtype), boxes[:, [1, 0, 3, 2]]], dim=1)
    nchw = features.permute(0, 3, 1, 2)
    out = tv_ops.roi_align(nchw, rois, list(output_size), spatial_scale=scale,
                           sampling_ratio=sampling_ratio, aligned=aligned)
    return torch.where(finite[:, None, None, None], out, 0.0).permute(0, 2, 3, 1)


def _dtype_ok(features) -> bool:
    return str(features.dtype).removeprefix("torch.") in _FAST_DTYPES


def roi_align(features, boxes, box_indices, output_size: tuple[int, int], scale: float,
              sampling_ratio: int, aligned: bool):
    """`ops.roi_align_ops.roi_align` through ``torchvision.ops.roi_align``, or None.

    Args are the checked ones of `roi_align`: features [B, H, W, C], boxes [N, 4] float32
    (gradient stopped), box_indices [N] int32, output_size (ph, pw), scale a Python float.
    Returns [N, ph, pw, C] in the features' dtype (differentiable with respect to the
    features), or None: no fast path (see the module docstring), float64 features, or a box
    index outside [0, B) (the portable path reports it).
    """
    tv_ops = torchvision_ops(features, boxes, box_indices)
    if tv_ops is None or not _dtype_ok(features):
        return None
    batch = features.shape[0]
    if box_indices.numel() and not bool(((box_indices >= 0) & (box_indices < batch)).all()):
        return None
    out = _pool_float(tv_ops, features.float(), boxes.detach().float(), box_indices,
                      output_size, scale, sampling_ratio, aligned)
    return out.to(features.dtype)


def multilevel_roi_align(levels: list, boxes, image, level_index, scales: list[float],
                         output_size: tuple[int, int], sampling_ratio: int, aligned: bool):
    """`ops.poolers.multilevel_roi_align` (method "align") through ``torchvision.ops.roi_align``,
    one call per level on that level's boxes (as torchvision's ``MultiScaleRoIAlign``), or None.

    Args: levels, L maps [B, H_l, W_l, C]; boxes [N, 4] float32 (y1, x1, y2, x2); image [N]
    int32 (in [0, B)); level_index [N] int32 in [0, L); scales, the L spatial scales.
    Returns [N, ph, pw, C] in the levels' dtype, or None (as `roi_align`).
    """
    tv_ops = torchvision_ops(*levels, boxes, image, level_index)
    if tv_ops is None or not _dtype_ok(levels[0]):
        return None
    import torch

    boxes = boxes.detach().float()
    order = torch.argsort(level_index, stable=True)
    counts = torch.bincount(level_index, minlength=len(levels)).tolist()
    pieces = []
    for level, (feature, count) in enumerate(zip(levels, counts, strict=True)):
        if count:
            pick = order[sum(counts[:level]):sum(counts[:level + 1])]
            pieces.append(_pool_float(tv_ops, feature.float(), boxes[pick], image[pick],
                                      output_size, scales[level], sampling_ratio, aligned))
        else:  # an empty piece keeps the level in the graph: a zero gradient, as portably
            channels = feature.shape[3]
            pieces.append(feature.float().reshape(-1, channels)[:0, None, None, :]
                          .expand(0, *output_size, channels))
    pooled = torch.cat(pieces, dim=0)[torch.argsort(order)]  # back to the boxes' order
    return pooled.to(levels[0].dtype)


# --------------------------------------------------------------------------- NMS


def _nms_one(tv_ops: ModuleType, boxes, scores, max_output_size: int, iou_threshold: float,
             score_threshold: float):
    """Indices [max_output_size] int32 (0-padded) and the kept count of one image."""
    import torch

    candidates = torch.nonzero(scores > score_threshold).squeeze(1)  # NaN is never one
    # Descending score, the lower index first among equal scores (the portable order);
    # torchvision then visits the boxes in this order: they are scored by distinct ranks.
    by_score = torch.sort(scores[candidates], descending=True, stable=True).indices
    order = candidates[by_score]
    picked = boxes[order]
    y1, x1, y2, x2 = picked.unbind(dim=1)
    corners = torch.stack([torch.minimum(x1, x2), torch.minimum(y1, y2),
                           torch.maximum(x1, x2), torch.maximum(y1, y2)], dim=1)
    ranks = torch.arange(order.numel(), 0, -1, dtype=torch.float32, device=boxes.device)
    # The portable path compares the float32 IoU with the threshold in float32; torchvision's
    # CPU kernel promotes the IoU to double: give it the float32 threshold, exactly.
    threshold = torch.tensor(iou_threshold, dtype=torch.float32).item()
    keep = tv_ops.nms(corners, ranks, threshold)[:max_output_size]
    kept = order[keep].to(torch.int32)
    indices = torch.zeros(max_output_size, dtype=torch.int32, device=boxes.device)
    indices[:kept.numel()] = kept
    return indices, kept.numel()


def batched_nms(boxes, scores, max_output_size: int, iou_threshold: float,
                score_threshold: float):
    """`ops.nms` greedy NMS of each image of boxes [B, N, 4] / scores [B, N] (float32, checked)
    through ``torchvision.ops.nms``, image by image, or None (no fast path, or N >= 2**24).

    torchvision's IoU is our formula once the corners are ordered (min / max), and a box with
    zero area neither suppresses nor is suppressed in both (0 / area or 0 / 0 is never above
    the threshold). Returns indices [B, max_output_size] int32 (0 from num_valid on) and
    num_valid [B] int32, exactly the portable path's outputs.
    """
    tv_ops = torchvision_ops(boxes, scores)
    if tv_ops is None or scores.shape[1] >= _MAX_EXACT_RANK:
        return None
    import torch

    boxes, scores = boxes.detach().float(), scores.detach().float()
    results = [_nms_one(tv_ops, boxes[b], scores[b], max_output_size, iou_threshold,
                        score_threshold) for b in range(scores.shape[0])]
    indices = torch.stack([r[0] for r in results]) if results else torch.zeros(
        (0, max_output_size), dtype=torch.int32, device=boxes.device)
    counts = torch.tensor([r[1] for r in results], dtype=torch.int32, device=boxes.device)
    return indices, counts
