"""RoIAlign speed: compiled custom op vs the pure-TF gather path vs torchvision (if installed).

Mask R-CNN training sizes: an 800 x 800 canvas, FPN levels P2-P5 (strides 4-32, 256 channels),
2 images x 512 RoIs, output 7 x 7 (box head) and 14 x 14 (mask head), sampling_ratio 2,
aligned=True. Boxes get their level with k = floor(4 + log2(sqrt(area) / 224)) clamped to
[2, 5] and each level is pooled by one single-level call; the level split is done once up front
so that only RoIAlign is timed; "custom_op multi-level" pools all levels in one call of the
multi-level op instead. Forward and forward + backward (gradient w.r.t. the feature maps) are
timed; the table shows medians and the ratio custom_op / other (< 1: custom_op is faster).

    python benchmarks/roi_align.py [--quick] [--repeats N]

--quick halves the canvas (a quarter of the pixels) and uses a quarter of the RoIs.
Threading is left at the TensorFlow / PyTorch defaults.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

# torch must be imported before tensorflow (the other order segfaults in this stack).
try:
    import torch
    import torchvision

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

import numpy as np
import tensorflow as tf

from keras_maskrcnn.ops import custom_roi_align, roi_align

STRIDES = (4, 8, 16, 32)
CHANNELS = 256
SAMPLING_RATIO = 2


def make_boxes(rng: np.random.Generator, num: int, canvas: int) -> np.ndarray:
    """[num, 4] float32 (y1, x1, y2, x2): log-uniform sizes 16-600 px, aspect 1:2-2:1, clipped."""
    size = np.exp(rng.uniform(np.log(16), np.log(600), num)) * canvas / 800
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), num))
    h, w = size * np.sqrt(aspect), size / np.sqrt(aspect)
    cy, cx = rng.uniform(0, canvas, num), rng.uniform(0, canvas, num)
    boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], 1)
    return np.clip(boxes, 0, canvas).astype(np.float32)


def split_levels(boxes: np.ndarray, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per level (P2..P5): (boxes [n, 4], box_indices [n]) with the FPN level rule."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    level = np.floor(4 + np.log2(np.sqrt(np.maximum(area, 1e-6)) / 224 + 1e-8))
    level = np.clip(level, 2, 5).astype(int)
    return [(boxes[level == k], image[level == k].astype(np.int32)) for k in range(2, 6)]


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up / tracing
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def per_level_fn(implementation: str, size: int, features, levels):
    """Forward returning one [n_l, size, size, C] tensor per non-empty level."""
    # Levels without boxes are skipped: a statically empty Mul crashes Grappler's arithmetic
    # optimizer (ReplaceMulWithBroadcastByTile, SIGFPE) in TF 2.21.
    used = [k for k, (b, _) in enumerate(levels) if b.shape[0] > 0]

    def pool(k):
        boxes, idx = levels[k]
        if implementation == "custom_op":
            return custom_roi_align.roi_align_custom(
                features[k], boxes, idx, (size, size), 1.0 / STRIDES[k], SAMPLING_RATIO, True
            )
        return roi_align(
            features[k], boxes, idx, (size, size), 1.0 / STRIDES[k], SAMPLING_RATIO, True,
            implementation="gather",
        )

    return lambda: [pool(k) for k in used]


def multilevel_fn(size: int, features, boxes, idx, level_index):
    """Forward of the one-call multi-level op (boxes sorted by level, like the per-level list)."""
    scales = [1.0 / s for s in STRIDES]
    return lambda: [
        custom_roi_align.multilevel_roi_align_custom(
            features, boxes, idx, level_index, (size, size), scales, SAMPLING_RATIO, True
        )
    ]


def time_tf(forward_all, features, upstream, repeats: int) -> tuple[float, float]:
    """Median ms of forward and of forward + gradient w.r.t. the features (upstream = grads)."""
    forward = tf.function(forward_all)

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            tape.watch(features)
            outs = forward_all()
            terms = [tf.reduce_sum(o * u) for o, u in zip(outs, upstream, strict=True)]
            loss = tf.add_n(terms)
        return tape.gradient(loss, features)

    return median_ms(forward, repeats), median_ms(forward_backward, repeats)


def time_torch(features_np, levels, upstream_np, size: int, repeats: int) -> tuple[float, float]:
    feats = [torch.from_numpy(f.transpose(0, 3, 1, 2).copy()) for f in features_np]
    rois = [
        torch.from_numpy(np.concatenate([i[:, None].astype(np.float32), b[:, [1, 0, 3, 2]]], 1))
        for b, i in levels
    ]
    ups = [torch.from_numpy(u.transpose(0, 3, 1, 2).copy()) for u in upstream_np]

    def forward_all(inputs):
        return [
            torchvision.ops.roi_align(f, r, (size, size), 1.0 / s, SAMPLING_RATIO, True)
            for f, r, s in zip(inputs, rois, STRIDES, strict=True)
        ]

    def forward():
        with torch.no_grad():
            forward_all(feats)

    def forward_backward():
        inputs = [f.detach().requires_grad_(True) for f in feats]
        loss = sum((o * u).sum() for o, u in zip(forward_all(inputs), ups, strict=True))
        loss.backward()

    return median_ms(forward, repeats), median_ms(forward_backward, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/4 of the pixels and RoIs")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    args = parser.parse_args()

    canvas, rois_per_image, batch = (400, 128, 2) if args.quick else (800, 512, 2)
    if not custom_roi_align.is_available():
        custom_roi_align.build(verbose=True)
        custom_roi_align.reset_cache()
    rng = np.random.default_rng(0)
    features_np = [
        rng.normal(size=(batch, -(-canvas // s), -(-canvas // s), CHANNELS)).astype(np.float32)
        for s in STRIDES
    ]
    boxes = np.concatenate([make_boxes(rng, rois_per_image, canvas) for _ in range(batch)])
    image = np.repeat(np.arange(batch), rois_per_image)
    levels = split_levels(boxes, image)
    features = [tf.constant(f) for f in features_np]
    tf_levels = [(tf.constant(b), tf.constant(i)) for b, i in levels]
    all_boxes = tf.constant(np.concatenate([b for b, _ in levels]))
    all_idx = tf.constant(np.concatenate([i for _, i in levels]))
    level_index = tf.constant(np.repeat(np.arange(4), [len(b) for b, _ in levels]).astype(np.int32))

    print(
        f"TF {tf.__version__}, torch {torch.__version__ if HAVE_TORCH else 'n/a'}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        + (f", torch threads {torch.get_num_threads()}" if HAVE_TORCH else "")
    )
    print(
        f"canvas {canvas}x{canvas}, batch {batch}, {rois_per_image} RoIs/image, C={CHANNELS}, "
        f"sampling_ratio {SAMPLING_RATIO}, aligned=True, boxes per level P2-P5: "
        f"{[len(b) for b, _ in levels]}, {args.repeats} repeats"
    )
    header = f"{'out':>5} {'implementation':<22} {'fwd ms':>9} {'fwd+bwd ms':>11} "
    header += f"{'ours/this fwd':>14} {'ours/this f+b':>14}"
    print(header)
    for size in (7, 14):
        upstream_np = [
            rng.normal(size=(len(b), size, size, CHANNELS)).astype(np.float32) for b, _ in levels
        ]
        upstream = [tf.constant(u) for u in upstream_np if len(u)]
        results = {}
        results["custom_op"] = time_tf(
            per_level_fn("custom_op", size, features, tf_levels), features, upstream, args.repeats
        )
        results["custom_op multi-level"] = time_tf(
            multilevel_fn(size, features, all_boxes, all_idx, level_index),
            features, [tf.concat(upstream, 0)], args.repeats,
        )
        results["gather"] = time_tf(
            per_level_fn("gather", size, features, tf_levels), features, upstream, args.repeats
        )
        if HAVE_TORCH:
            results["torchvision"] = time_torch(features_np, levels, upstream_np, size,
                                                args.repeats)
        ours = results["custom_op"]
        for name, (fwd, fb) in results.items():
            print(
                f"{size:>2}x{size:<2} {name:<22} {fwd:>9.2f} {fb:>11.2f} "
                f"{ours[0] / fwd:>14.3f} {ours[1] / fb:>14.3f}"
            )


if __name__ == "__main__":
    main()
