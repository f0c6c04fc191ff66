"""NumPy RoIAlign written from the definition: the one reference the RoIAlign tests compare to.

torchvision / Detectron2 semantics (their CPU kernel, ``roi_align_kernel.cpp``), NHWC feature
maps and (y1, x1, y2, x2) boxes in input pixels. Plain loops over boxes, bins and sample
points; the sample coordinates are computed in float32 in the kernel's operation order, the
bilinear reads and the sums in float64.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32


def bilinear(image: np.ndarray, y: float, x: float) -> np.ndarray:
    """RoIAlign's bilinear read of image [H, W, C] at (y, x) with the kernel's border rules.

    A point with y < -1, y > H, x < -1 or x > W reads 0; otherwise a negative coordinate
    becomes 0, and a point whose floor is at or past the last row (column) snaps to it.
    """
    height, width = image.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(image.shape[2])
    y, x = max(float(y), 0.0), max(float(x), 0.0)
    y_lo, x_lo = int(y), int(x)
    if y_lo >= height - 1:
        y_lo = y_hi = height - 1
        y = float(y_lo)
    else:
        y_hi = y_lo + 1
    if x_lo >= width - 1:
        x_lo = x_hi = width - 1
        x = float(x_lo)
    else:
        x_hi = x_lo + 1
    ly, lx = y - y_lo, x - x_lo
    hy, hx = 1.0 - ly, 1.0 - lx
    patch = image[np.ix_([y_lo, y_hi], [x_lo, x_hi])].astype(np.float64)  # [2, 2, C]
    return hy * hx * patch[0, 0] + hy * lx * patch[0, 1] + ly * hx * patch[1, 0] + ly * lx * patch[1, 1]


def roi_align_np(features, boxes, box_indices, output_size, scale, sampling_ratio, aligned):
    """RoIAlign from its definition.

    Args:
        features: [B, H, W, C] array (NHWC).
        boxes: [N, 4] (y1, x1, y2, x2) in input pixels.
        box_indices: [N] image of each box.
        output_size: (ph, pw).
        scale: spatial scale (feature pixels per input pixel).
        sampling_ratio: samples per bin and axis; 0 = ceil(roi_extent / pooled) per box.
        aligned: shift by -0.5 pixel; False clamps the RoI extent to >= 1 (legacy).

    Returns:
        [N, ph, pw, C] float64.
    """
    ph, pw = output_size
    features = np.asarray(features)
    out = np.zeros((len(boxes), ph, pw, features.shape[3]))
    offset = F32(0.5) if aligned else F32(0.0)
    for n, (box, b) in enumerate(zip(np.asarray(boxes, F32), box_indices, strict=True)):
        y1, x1, y2, x2 = (F32(v) * F32(scale) - offset for v in box)
        roi_h, roi_w = y2 - y1, x2 - x1
        if not aligned:
            roi_h, roi_w = max(roi_h, F32(1)), max(roi_w, F32(1))
        bin_h, bin_w = roi_h / F32(ph), roi_w / F32(pw)
        grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / F32(ph)))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / F32(pw)))
        count = max(grid_h * grid_w, 1)
        for p in range(ph):
            for q in range(pw):
                acc = np.zeros(features.shape[3])
                for iy in range(grid_h):
                    y = y1 + F32(p) * bin_h + F32(iy + 0.5) * bin_h / F32(grid_h)
                    for ix in range(grid_w):
                        x = x1 + F32(q) * bin_w + F32(ix + 0.5) * bin_w / F32(grid_w)
                        acc += bilinear(features[b], y, x)
                out[n, p, q] = acc / count
    return out
