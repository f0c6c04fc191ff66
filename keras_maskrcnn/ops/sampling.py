"""Balanced random sampling of positive and negative examples with static shapes."""

from __future__ import annotations

import tensorflow as tf


def _kth_largest(values: tf.Tensor, k: tf.Tensor, max_k: int) -> tf.Tensor:
    """The k-th largest entry (1-based) of each row of `values [B, N]`, +inf where k == 0."""
    top = tf.math.top_k(values, k=max_k, sorted=True).values
    index = tf.maximum(k - 1, 0)
    kth = tf.gather(top, index[:, None], batch_dims=1)[:, 0]
    return tf.where(k > 0, kth, tf.constant(float("inf"), values.dtype))


# Philox-4x32-10 (Salmon et al. 2011) as in TF's `random::PhiloxRandom`, and the fixed key TF's
# stateless kernels scramble a seed with (`GenerateKey` in core/kernels/stateless_random_ops.cc).
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_SEED_KEY = (0x3EC8F720, 0x02461E29)
_PHILOX_ALG = 1  # RNG_ALG_PHILOX, what "auto_select" means for the CPU and GPU kernels


def _u64(value: int) -> tf.Tensor:
    return tf.constant(value, tf.uint64)


def philox_key_counter(seeds: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """TF's stateless seed scrambling: `seeds [..., 2]` int32 -> (key [...], counter [..., 2])
    uint64, equal to `tf.raw_ops.StatelessRandomGetKeyCounter` on CPU / GPU for every seed.

    Written out in integer ops because XLA's own derivation differs for negative seeds (it
    zero-extends each int32 half where the CPU / GPU kernels sign-extend it, so any seed with
    a negative entry, e.g. half of what `stateless_fold_in` returns, draws other numbers under
    jit_compile). Values are uint32 held in uint64, so that the 32 x 32 -> 64-bit products
    are exact.
    """
    words = tf.bitcast(tf.cast(tf.cast(seeds, tf.int32), tf.int64), tf.uint64)  # sign-extended
    low, shift = _u64(0xFFFFFFFF), _u64(32)
    s0, s1 = words[..., 0], words[..., 1]
    c = [s0 & low, tf.bitwise.right_shift(s0, shift), s1 & low, tf.bitwise.right_shift(s1, shift)]
    k = [_u64(_SEED_KEY[0]), _u64(_SEED_KEY[1])]
    for r in range(10):
        p0 = _u64(_PHILOX_M[0]) * c[0]
        p1 = _u64(_PHILOX_M[1]) * c[2]
        c = [tf.bitwise.right_shift(p1, shift) ^ c[1] ^ k[0], p1 & low,
             tf.bitwise.right_shift(p0, shift) ^ c[3] ^ k[1], p0 & low]
        if r < 9:
            k = [(k[0] + _u64(_PHILOX_W[0])) & low, (k[1] + _u64(_PHILOX_W[1])) & low]
    key = c[0] | tf.bitwise.left_shift(c[1], shift)
    counter = tf.stack([tf.zeros_like(key), c[2] | tf.bitwise.left_shift(c[3], shift)], -1)
    return key, counter


def _stateless_bits(shape, key: tf.Tensor, counter: tf.Tensor, dtype) -> tf.Tensor:
    """Philox bits of one scalar key / [2] counter: the same numbers on CPU, GPU and XLA."""
    return tf.raw_ops.StatelessRandomUniformFullIntV2(
        shape=shape, key=key[None], counter=counter, alg=tf.constant(_PHILOX_ALG), dtype=dtype)


def stateless_uniform_rows(shape: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
    """`tf.random.stateless_uniform(shape, seed=seeds[b])` for each row b ([B, 2] int32 seeds,
    float32 rows of `shape`), bit for bit as the CPU / GPU kernels draw it, also under XLA.

    XLA's kernel draws the same Philox bits but maps them to [0, 1) with their HIGH 23 bits
    where TF's kernels use the LOW 23 (``Uint32ToFloat``), and scrambles negative seeds
    differently (`philox_key_counter`): both are done here explicitly.
    """
    key, counter = philox_key_counter(seeds)

    def row(kc):
        bits = _stateless_bits(shape, kc[0], kc[1], tf.uint32)
        mantissa = tf.bitwise.bitwise_and(bits, tf.constant(0x7FFFFF, tf.uint32))
        return tf.cast(mantissa, tf.float32) * (2.0 ** -23)  # exact: (1 + m 2^-23) - 1

    return tf.map_fn(row, (key, counter), fn_output_signature=tf.float32)


def fold_in_rows(seeds: tf.Tensor, data: int) -> tf.Tensor:
    """`tf.random.experimental.stateless_fold_in(seeds[b], data)` for each row of `seeds [B, 2]`
    int32 -> [B, 2] int32, with the same numbers under XLA for negative seeds too."""
    key, counter = philox_key_counter(seeds)
    first = tf.map_fn(lambda kc: _stateless_bits([], kc[0], kc[1], tf.int32), (key, counter),
                      fn_output_signature=tf.int32)
    return tf.stack([first, tf.fill(tf.shape(first), tf.constant(data, tf.int32))], -1)


def random_keys(shape: tf.Tensor, seeds: tf.Tensor | None) -> tf.Tensor:
    """Uniform [0, 1) keys of `shape` [B, N]: row b from the stateless seed `seeds[b]` ([B, 2]
    int32) when given (`tf.random.stateless_uniform`'s numbers, under XLA too:
    `stateless_uniform_rows`), else from the stateful global generator."""
    if seeds is None:
        return tf.random.uniform(shape)
    return stateless_uniform_rows(shape[1:], tf.cast(seeds, tf.int32))


QUOTA_ROUNDINGS = ("round", "floor")


def positive_quota(num_samples: int, positive_fraction: float, rounding: str = "round",
                   num_candidates: int | None = None) -> int:
    """The most positives a sampler keeps per row (a Python int: it sizes static shapes).

    "round": `round(min(num_samples, N) * fraction)` (half to even; Detectron2 rounds the
    same product, up to ties). "floor": `int(num_samples * fraction)` as torchvision's
    `BalancedPositiveNegativeSampler` computes it (Python float product, truncated), at most
    N. `num_candidates` is N, the row length, when known.
    """
    if rounding not in QUOTA_ROUNDINGS:
        raise ValueError(f"quota rounding must be one of {QUOTA_ROUNDINGS}, got {rounding!r}")
    clipped = num_samples if num_candidates is None else min(num_samples, num_candidates)
    if rounding == "round":
        return int(round(clipped * positive_fraction))
    return min(int(num_samples * positive_fraction), clipped)


def subsample_labels(
    positive: tf.Tensor,
    negative: tf.Tensor,
    num_samples: int,
    positive_fraction: float,
    seeds: tf.Tensor | None = None,
    rounding: str = "round",
) -> tuple[tf.Tensor, tf.Tensor]:
    """Randomly keeps at most `num_samples` examples per row, at most `positive_quota(
    num_samples, positive_fraction, rounding)` of them positive; negatives fill the rest
    (Detectron2's `subsample_labels`, torchvision's `BalancedPositiveNegativeSampler`).

    Args:
      positive, negative: `[B, N]` bool, disjoint candidate masks.
      seeds: optional `[B, 2]` int32 stateless seeds, one per row: the sample of row b then
        depends only on `seeds[b]` and the masks (reproducible, and the same whichever replica
        or batch the image lands in). None: stateful random.
      rounding: "round" or "floor", see `positive_quota`.
    Returns:
      `(sampled_positive, sampled_negative)`, `[B, N]` bool.
    """
    n = positive.shape[1]
    max_pos = positive_quota(num_samples, positive_fraction, rounding, n)
    if n is not None:
        num_samples = min(num_samples, n)
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
