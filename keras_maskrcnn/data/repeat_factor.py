"""Repeat-factor sampling (the LVIS rule of Gupta et al. 2019, as in Detectron2): images holding
rare classes are seen more often.

With threshold T and N training images:
- f_c = (images with at least one non-crowd instance of class c) / N, for each class c present;
- r_c = max(1, sqrt(T / f_c));
- r_i = max of r_c over the classes of image i (1 for an image without instances).

A sampling epoch holds image i floor(r_i) times, plus once more with probability frac(r_i), in a
random order: about sum_i r_i images. Which extra copies are drawn and the order are a pure
function of (seed, epoch) (`epoch_order`), so the stream of epochs is the same on every rerun,
and a resumed run skips into it exactly where the interrupted one stopped.

The draws use NumPy's PCG64 seeded with (seed, epoch) and only its uniform doubles
(`Generator.random`), which NumPy keeps stable across releases.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

_SEED_MODULUS = 2**63


def category_repeat_factors(image_labels: Sequence[Iterable[int]],
                            threshold: float) -> dict[int, float]:
    """r_c = max(1, sqrt(T / f_c)) for every class c present in `image_labels`.

    Args:
        image_labels: per image, the labels of its non-crowd instances (repeats allowed).
        threshold: T > 0, a fraction of images (LVIS: 0.001).

    Returns:
        {label: r_c} (float).
    """
    threshold = _check_threshold(threshold)
    count = len(image_labels)
    if count == 0:
        raise ValueError("repeat factors need at least one image")
    images_with: dict[int, int] = {}
    for labels in image_labels:
        for label in set(int(v) for v in labels):
            images_with[label] = images_with.get(label, 0) + 1
    return {c: max(1.0, math.sqrt(threshold / (n / count))) for c, n in images_with.items()}


def image_repeat_factors(image_labels: Sequence[Iterable[int]], threshold: float) -> np.ndarray:
    """r_i = max over the image's classes of r_c (1.0 for an image without instances).

    Returns:
        `[N]` float64, one per image of `image_labels`, in its order.
    """
    image_labels = [list(labels) for labels in image_labels]
    per_class = category_repeat_factors(image_labels, threshold)
    return np.array([max((per_class[int(c)] for c in labels), default=1.0)
                     for labels in image_labels], np.float64)


def _generator(seed: int, epoch: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([int(seed) % _SEED_MODULUS, int(epoch)]))


def _repeats(factors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    whole = np.floor(factors)
    return (whole + (rng.random(len(factors)) < factors - whole)).astype(np.int64)


def epoch_repeats(factors: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """How many times each image is in sampling epoch `epoch`: floor(r_i), plus one where a
    uniform draw (seeded by (seed, epoch)) falls below frac(r_i).

    Returns:
        `[N]` int64, each >= 1.
    """
    return _repeats(np.asarray(factors, np.float64), _generator(seed, epoch))


def epoch_order(image_ids: Sequence[int], factors: np.ndarray, seed: int, epoch: int,
                shuffle: bool = True) -> np.ndarray:
    """The image ids of sampling epoch `epoch`: each repeated `epoch_repeats` times, shuffled
    (a permutation drawn next from the same (seed, epoch) generator) unless `shuffle` is
    False, when the copies follow `image_ids`' order. A pure function of its arguments.

    Returns:
        `[sum of the repeats]` int64.
    """
    factors = np.asarray(factors, np.float64)
    if len(factors) != len(image_ids):
        raise ValueError(f"{len(factors)} repeat factors for {len(image_ids)} images")
    rng = _generator(seed, epoch)
    order = np.repeat(np.asarray(image_ids, np.int64), _repeats(factors, rng))
    if shuffle:
        order = order[np.argsort(rng.random(len(order)), kind="stable")]
    return order


def expected_epoch_length(factors: np.ndarray) -> float:
    """sum_i r_i: the mean number of images in a sampling epoch."""
    return float(np.sum(np.asarray(factors, np.float64)))


def source_image_labels(source) -> list[list[int]]:
    """Per image of `source.image_ids`, the labels of its non-crowd instances: the source's
    `image_labels(image_id)` where it has one (`CocoDataset`: no mask decoded), else from
    `load_annotations`."""
    if hasattr(source, "image_labels"):
        return [list(source.image_labels(i)) for i in source.image_ids]
    out = []
    for image_id in source.image_ids:
        ann = source.load_annotations(image_id)
        labels = np.asarray(ann["labels"]).reshape(-1)
        crowd = np.asarray(ann.get("is_crowd", np.zeros(len(labels), bool)), bool).reshape(-1)
        out.append([int(v) for v in labels[~crowd]])
    return out


def source_repeat_factors(source, threshold: float) -> np.ndarray:
    """`[N]` r_i of the images of a dataset source, in `source.image_ids` order."""
    return image_repeat_factors(source_image_labels(source), threshold)


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
            not math.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"repeat_factor_threshold must be a number > 0 (0 turns repeat-factor "
                         f"sampling off), got {threshold!r}")
    return float(threshold)
