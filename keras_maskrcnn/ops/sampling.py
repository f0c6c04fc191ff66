"""Balanced random sampling of positive and negative examples with static shapes."""

from __future__ import annotations

import tensorflow as tf


def _kth_largest(values: tf.Tensor, k: tf.Tensor, max_k: int) -> tf.Tensor:
    """The k-th largest entry (1-based) of each row of `values [B, N]`, +inf where k == 0."""
    top = tf.math.top_k(values, k=max_k, sorted=True).values
    index = tf.maximum(k - 1, 0)
    kth = tf.gather(top, index[:, None], batch_dims=1)[:, 0]
    return tf.where(k > 0, kth, tf.constant(float("inf"), values.dtype))


def random_keys(shape: tf.Tensor, seeds: tf.Tensor | None) -> tf.Tensor:
    """Uniform [0, 1) keys of `shape` [B, N]: row b from the stateless seed `seeds[b]` ([B, 2]
    int32) when given, else from the stateful global generator."""
    if seeds is None:
        return tf.random.uniform(shape)
    seeds = tf.cast(seeds, tf.int32)
    return tf.map_fn(lambda s: tf.random.stateless_uniform(shape[1:], seed=s), seeds,
                     fn_output_signature=tf.float32)


def subsample_labels(
    positive: tf.Tensor,
    negative: tf.Tensor,
    num_samples: int,
    positive_fraction: float,
    seeds: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Randomly keeps at most `num_samples` examples per row, at most a `positive_fraction` of them
    positive; negatives fill the rest (Detectron2's `subsample_labels`).

    Args:
      positive, negative: `[B, N]` bool, disjoint candidate masks.
      seeds: optional `[B, 2]` int32 stateless seeds, one per row: the sample of row b then
        depends only on `seeds[b]` and the masks (reproducible, and the same whichever replica
        or batch the image lands in). None: stateful random.
    Returns:
      `(sampled_positive, sampled_negative)`, `[B, N]` bool.
    """
    n = positive.shape[1]
    if n is not None:
        num_samples = min(num_samples, n)
    max_pos = int(round(num_samples * positive_fraction))
    keys = random_keys(tf.shape(positive), seeds)
    pos_keys = tf.where(positive, keys, -1.0)
    neg_keys = tf.where(negative, keys, -1.0)

    num_pos = tf.minimum(tf.reduce_sum(tf.cast(positive, tf.int32), axis=1), max_pos)
    num_neg = tf.minimum(tf.reduce_sum(tf.cast(negative, tf.int32), axis=1), num_samples - num_pos)
    if max_pos > 0:
        sampled_pos = positive & (pos_keys >= _kth_largest(pos_keys, num_pos, max_pos)[:, None])
    else:
        sampled_pos = tf.zeros_like(positive)
    sampled_neg = negative & (neg_keys >= _kth_largest(neg_keys, num_neg, num_samples)[:, None])
    return sampled_pos, sampled_neg


def sampled_indices(
    sampled_positive: tf.Tensor, sampled_negative: tf.Tensor, num_samples: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Gathers the sampled examples into a fixed-size list, positives first.

    Args:
      sampled_positive, sampled_negative: `[B, N]` bool with at most `num_samples` true per row.
    Returns:
      `indices [B, num_samples]` int32 into N, `valid [B, num_samples]` bool,
      `is_positive [B, num_samples]` bool. Invalid slots point at index 0.
    """
    # Ties between equal keys are broken by a small decreasing ramp so the order is stable.
    n = tf.shape(sampled_positive)[1]
    ramp = 1.0 - tf.cast(tf.range(n), tf.float32) / tf.cast(n + 1, tf.float32)
    keys = (2.0 * tf.cast(sampled_positive, tf.float32) + tf.cast(sampled_negative, tf.float32)
            + 0.5 * ramp[None, :])
    values, indices = tf.math.top_k(keys, k=num_samples, sorted=True)
    valid = values >= 1.0
    is_positive = values >= 2.0
    return tf.where(valid, indices, 0), valid, is_positive
