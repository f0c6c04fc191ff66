"""Balanced random sampling of positive and negative examples with static shapes.

Runs on every Keras backend (`keras.ops`). The stateless per-row random keys are TensorFlow's
`tf.random.stateless_uniform` numbers, bit for bit, on TensorFlow, JAX and PyTorch alike: the
Philox-4x32-10 generator and TF's seed scrambling are written out in int32 `keras.ops`
(`philox_uniform_rows`, `philox_fold_in_rows`), so that the sample of an image, hence the
losses of a training step, are the same on every backend for the same seeds. On TensorFlow a
fast path draws the same bits with TF's own kernel (`stateless_uniform_rows`, `fold_in_rows`;
tested equal to the portable path).
"""

from __future__ import annotations

import keras
from keras import ops

from keras_maskrcnn import backend


def _kth_largest(values, k, max_k: int):
    """The k-th largest entry (1-based) of each row of `values [B, N]`, +inf where k == 0."""
    top = ops.top_k(values, k=max_k, sorted=True)[0]
    index = ops.maximum(k - 1, 0)
    kth = ops.take_along_axis(top, index[:, None], axis=1)[:, 0]
    return ops.where(k > 0, kth, ops.full_like(kth, float("inf")))


# Philox-4x32-10 (Salmon et al. 2011) as in TF's `random::PhiloxRandom`, and the fixed key TF's
# stateless kernels scramble a seed with (`GenerateKey` in core/kernels/stateless_random_ops.cc).
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_SEED_KEY = (0x3EC8F720, 0x02461E29)
_PHILOX_ALG = 1  # RNG_ALG_PHILOX, what "auto_select" means for the CPU and GPU kernels
_PHILOX_ROUNDS = 10

# --------------------------------------------------------------------------- portable Philox
#
# A 32-bit word is a pair (lo, hi) of int32 tensors holding its two 16-bit halves ("limbs",
# each in [0, 65535]). Every intermediate value stays below 2^26, so nothing depends on how a
# backend wraps int32 overflow, shifts negative numbers or supports uint32 (torch barely does).

_LIMB = 0xFFFF


def _limbs(x):
    """int32 tensor (any bit pattern) -> its word (lo, hi): masks after the shift, so arithmetic
    and logical right shifts agree."""
    x = ops.cast(x, "int32")
    return ops.bitwise_and(x, _LIMB), ops.bitwise_and(ops.right_shift(x, 16), _LIMB)


def _to_int32(word):
    """A word (lo, hi) -> int32 tensor with its bit pattern (two's complement), without
    overflow: hi >= 2^15 is taken as hi - 2^16 before the product by 2^16."""
    lo, hi = word
    signed_hi = hi - ops.right_shift(hi, 15) * 65536
    return signed_hi * 65536 + lo


def _xor(*words):
    lo, hi = words[0]
    for other_lo, other_hi in words[1:]:
        lo, hi = ops.bitwise_xor(lo, other_lo), ops.bitwise_xor(hi, other_hi)
    return lo, hi


def _add_const(word, value: int):
    """word + value mod 2^32 (value a Python int)."""
    lo = word[0] + (value & _LIMB)
    carry = ops.right_shift(lo, 16)
    hi = ops.bitwise_and(word[1] + ((value >> 16) & _LIMB) + carry, _LIMB)
    return ops.bitwise_and(lo, _LIMB), hi


def _mul_const(word, value: int):
    """The 64-bit product word * value (value a Python uint32) -> (low word, high word).

    The word's 16-bit limbs times the constant's 8-bit limbs (< 2^24 each) are summed per 8-bit
    column (two terms at most, < 2^25) and the carries propagated one byte at a time.
    """
    a0, a1 = word
    m = [(value >> (8 * j)) & 0xFF for j in range(4)]
    columns = [a0 * m[0], a0 * m[1], a0 * m[2] + a1 * m[0], a0 * m[3] + a1 * m[1], a1 * m[2],
               a1 * m[3]]
    carry, octets = 0, []
    for k in range(8):
        total = columns[k] + carry if k < len(columns) else carry
        octets.append(ops.bitwise_and(total, 0xFF))
        carry = ops.right_shift(total, 8)
    limbs = [octets[2 * t] + octets[2 * t + 1] * 256 for t in range(4)]
    return (limbs[0], limbs[1]), (limbs[2], limbs[3])


def _round(c0, c1, c2, c3, k0, k1):
    """One Philox round, then the key schedule's step (unused after the last round)."""
    lo0, hi0 = _mul_const(c0, _PHILOX_M[0])
    lo1, hi1 = _mul_const(c2, _PHILOX_M[1])
    return (_xor(hi1, c1, k0), lo1, _xor(hi0, c3, k1), lo0,
            _add_const(k0, _PHILOX_W[0]), _add_const(k1, _PHILOX_W[1]))


def philox_4x32_10(counter, key):
    """Philox-4x32-10 (TF's `PhiloxRandom` block): four counter words and two key words (each a
    (lo, hi) pair of int32 16-bit limb tensors, broadcastable) -> the four output words, of
    their broadcast shape. The ten rounds run as one `ops.fori_loop` (a small graph: one
    round compiles once under XLA)."""
    limbs = [limb for word in (*counter, *key) for limb in word]
    zero = ops.zeros_like(limbs[0])
    for limb in limbs[1:]:
        zero = zero + ops.zeros_like(limb)
    state = tuple(ops.cast(limb, "int32") + zero for limb in limbs)  # one shape for the loop

    def body(_, state):
        words = [state[i : i + 2] for i in range(0, 12, 2)]
        return tuple(limb for word in _round(*words) for limb in word)

    state = ops.fori_loop(0, _PHILOX_ROUNDS, body, state)
    return tuple(state[i : i + 2] for i in range(0, 8, 2))


def _const_word(value: int, like):
    return ops.full_like(like, value & _LIMB), ops.full_like(like, (value >> 16) & _LIMB)


def philox_seed_words(seeds):
    """TF's stateless seed scrambling in portable ops: `seeds [..., 2]` int32 -> (key words
    (k0, k1), counter words (c2, c3)), the same numbers as `philox_key_counter`:
    key = k0 | k1 << 32, counter = [0, c2 | c3 << 32]. Each int32 seed half is sign-extended
    to 64 bits, as TF's CPU / GPU kernels do."""
    seeds = ops.cast(seeds, "int32")
    s0, s1 = seeds[..., 0], seeds[..., 1]
    sign0 = ops.where(s0 < 0, _LIMB, 0)
    sign1 = ops.where(s1 < 0, _LIMB, 0)
    zero = ops.zeros_like(s0)
    counter = (_limbs(s0), (sign0, sign0), _limbs(s1), (sign1, sign1))
    key = (_const_word(_SEED_KEY[0], zero), _const_word(_SEED_KEY[1], zero))
    c0, c1, c2, c3 = philox_4x32_10(counter, key)
    return (c0, c1), (c2, c3)


def philox_uniform_rows(num: int, seeds):
    """`tf.random.stateless_uniform([num], seed=seeds[b])` for each row b of `seeds [B, 2]`
    int32 -> `[B, num]` float32, bit for bit, in portable `keras.ops` (every backend).

    Element i of a row is word i % 4 of the Philox block at counter (i // 4, 0, c2, c3), key
    (k0, k1) from `philox_seed_words`; its low 23 bits are the float's mantissa in [1, 2),
    minus 1 (TF's `Uint32ToFloat`), i.e. m * 2^-23 exactly.
    """
    key, (c2, c3) = philox_seed_words(seeds)
    groups = (num + 3) // 4
    block = ops.arange(groups, dtype="int32")[None, :]  # [1, G]
    zero = ops.zeros_like(block)
    key = tuple((lo[:, None], hi[:, None]) for lo, hi in key)
    counter = (_limbs(block), (zero, zero), (c2[0][:, None], c2[1][:, None]),
               (c3[0][:, None], c3[1][:, None]))
    words = philox_4x32_10(counter, key)
    mantissa = ops.stack([lo + ops.bitwise_and(hi, 0x7F) * 65536 for lo, hi in words], axis=-1)
    rows = ops.reshape(mantissa, (ops.shape(mantissa)[0], groups * 4))[:, :num]
    return ops.cast(rows, "float32") * (2.0**-23)


def philox_fold_in_rows(seeds, data: int):
    """`tf.random.experimental.stateless_fold_in(seeds[b], data)` for each row of `seeds [B, 2]`
    int32 -> [B, 2] int32 in portable `keras.ops`: (first int32 of the seed's Philox stream,
    data)."""
    key, (c2, c3) = philox_seed_words(seeds)
    zero = ops.zeros_like(key[0][0])
    first = philox_4x32_10(((zero, zero), (zero, zero), c2, c3), key)[0]
    first = _to_int32(first)
    return ops.stack([first, ops.full_like(first, data)], axis=-1)


# --------------------------------------------------------------------------- TensorFlow path


def philox_key_counter(seeds):
    """TensorFlow only: TF's stateless seed scrambling, `seeds [..., 2]` int32 -> (key [...],
    counter [..., 2]) uint64, equal to `tf.raw_ops.StatelessRandomGetKeyCounter` on CPU / GPU
    for every seed (and to `philox_seed_words`).

    Written out in integer ops because XLA's own derivation differs for negative seeds (it
    zero-extends each int32 half where the CPU / GPU kernels sign-extend it, so any seed with
    a negative entry, e.g. half of what `stateless_fold_in` returns, draws other numbers under
    jit_compile). Values are uint32 held in uint64, so that the 32 x 32 -> 64-bit products
    are exact.
    """
    tf = backend.tensorflow()

    def u64(value: int):
        return tf.constant(value, tf.uint64)

    words = tf.bitcast(tf.cast(tf.cast(seeds, tf.int32), tf.int64), tf.uint64)  # sign-extended
    low, shift = u64(0xFFFFFFFF), u64(32)
    s0, s1 = words[..., 0], words[..., 1]
    c = [s0 & low, tf.bitwise.right_shift(s0, shift), s1 & low, tf.bitwise.right_shift(s1, shift)]
    k = [u64(_SEED_KEY[0]), u64(_SEED_KEY[1])]
    for r in range(_PHILOX_ROUNDS):
        p0 = u64(_PHILOX_M[0]) * c[0]
        p1 = u64(_PHILOX_M[1]) * c[2]
        c = [tf.bitwise.right_shift(p1, shift) ^ c[1] ^ k[0], p1 & low,
             tf.bitwise.right_shift(p0, shift) ^ c[3] ^ k[1], p0 & low]
        if r < _PHILOX_ROUNDS - 1:
            k = [(k[0] + u64(_PHILOX_W[0])) & low, (k[1] + u64(_PHILOX_W[1])) & low]
    key = c[0] | tf.bitwise.left_shift(c[1], shift)
    counter = tf.stack([tf.zeros_like(key), c[2] | tf.bitwise.left_shift(c[3], shift)], -1)
    return key, counter


def _stateless_bits(shape, key, counter, dtype):
    """TensorFlow only: Philox bits of one scalar key / [2] counter, the same numbers on CPU,
    GPU and XLA."""
    tf = backend.tensorflow()
    return tf.raw_ops.StatelessRandomUniformFullIntV2(
        shape=shape, key=key[None], counter=counter, alg=tf.constant(_PHILOX_ALG), dtype=dtype)


def stateless_uniform_rows(shape, seeds):
    """TensorFlow only (the fast path of `random_keys`, equal to `philox_uniform_rows`):
    `tf.random.stateless_uniform(shape, seed=seeds[b])` for each row b ([B, 2] int32 seeds,
    float32 rows of `shape`), bit for bit as the CPU / GPU kernels draw it, also under XLA.

    XLA's kernel draws the same Philox bits but maps them to [0, 1) with their HIGH 23 bits
    where TF's kernels use the LOW 23 (``Uint32ToFloat``), and scrambles negative seeds
    differently (`philox_key_counter`): both are done here explicitly.
    """
    tf = backend.tensorflow()
    key, counter = philox_key_counter(seeds)

    def row(kc):
        bits = _stateless_bits(shape, kc[0], kc[1], tf.uint32)
        mantissa = tf.bitwise.bitwise_and(bits, tf.constant(0x7FFFFF, tf.uint32))
        return tf.cast(mantissa, tf.float32) * (2.0 ** -23)  # exact: (1 + m 2^-23) - 1

    return tf.map_fn(row, (key, counter), fn_output_signature=tf.float32)


def fold_in_rows(seeds, data: int):
    """`tf.random.experimental.stateless_fold_in(seeds[b], data)` for each row of `seeds [B, 2]`
    int32 -> [B, 2] int32, with the same numbers under XLA for negative seeds too. TensorFlow:
    TF's kernel; other backends: `philox_fold_in_rows` (the same numbers)."""
    if not backend.is_tensorflow():
        return philox_fold_in_rows(seeds, data)
    tf = backend.tensorflow()
    key, counter = philox_key_counter(seeds)
    first = tf.map_fn(lambda kc: _stateless_bits([], kc[0], kc[1], tf.int32), (key, counter),
                      fn_output_signature=tf.int32)
    return tf.stack([first, tf.fill(tf.shape(first), tf.constant(data, tf.int32))], -1)


def random_keys(shape, seeds):
    """Uniform [0, 1) keys of `shape` [B, N]: row b from the stateless seed `seeds[b]` ([B, 2]
    int32) when given (`tf.random.stateless_uniform`'s numbers on every backend, under XLA
    too), else from the stateful global generator (`tf.random.uniform` on TensorFlow,
    `keras.random.uniform` elsewhere: not inside a JAX jit).

    `shape` may be a tensor on TensorFlow (dynamic N); other backends need a static N.
    """
    if backend.is_tensorflow():
        tf = backend.tensorflow()
        if seeds is None:
            return tf.random.uniform(shape)
        return stateless_uniform_rows(shape[1:], tf.cast(seeds, tf.int32))
    if seeds is None:
        return keras.random.uniform(tuple(shape))
    return philox_uniform_rows(int(shape[1]), seeds)


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


def _row_shape(x):
    """(B, N) of `x [B, N]`: Python ints where static; a TF shape tensor where not (TF only)."""
    if backend.is_tensorflow() and None in tuple(x.shape):
        return backend.tensorflow().shape(x)
    return tuple(x.shape)


def subsample_labels(
    positive,
    negative,
    num_samples: int,
    positive_fraction: float,
    seeds=None,
    rounding: str = "round",
):
    """Randomly keeps at most `num_samples` examples per row, at most `positive_quota(
    num_samples, positive_fraction, rounding)` of them positive; negatives fill the rest
    (Detectron2's `subsample_labels`, torchvision's `BalancedPositiveNegativeSampler`).

    Args:
      positive, negative: `[B, N]` bool, disjoint candidate masks (N static except on TF).
      seeds: optional `[B, 2]` int32 stateless seeds, one per row: the sample of row b then
        depends only on `seeds[b]` and the masks (reproducible, the same whichever replica
        or batch the image lands in, and the same on every backend). None: stateful random.
      rounding: "round" or "floor", see `positive_quota`.
    Returns:
      `(sampled_positive, sampled_negative)`, `[B, N]` bool.
    """
    n = positive.shape[1]
    max_pos = positive_quota(num_samples, positive_fraction, rounding, n)
    if n is not None:
        num_samples = min(num_samples, n)
    keys = random_keys(_row_shape(positive), seeds)
    pos_keys = ops.where(positive, keys, -1.0)
    neg_keys = ops.where(negative, keys, -1.0)

    num_pos = ops.minimum(ops.sum(ops.cast(positive, "int32"), axis=1), max_pos)
    num_neg = ops.minimum(ops.sum(ops.cast(negative, "int32"), axis=1), num_samples - num_pos)
    if max_pos > 0:
        sampled_pos = ops.logical_and(
            positive, pos_keys >= _kth_largest(pos_keys, num_pos, max_pos)[:, None])
    else:
        sampled_pos = ops.zeros_like(positive)
    sampled_neg = ops.logical_and(
        negative, neg_keys >= _kth_largest(neg_keys, num_neg, num_samples)[:, None])
    return sampled_pos, sampled_neg


def sampled_indices(sampled_positive, sampled_negative, num_samples: int):
    """Gathers the sampled examples into a fixed-size list, positives first.

    Args:
      sampled_positive, sampled_negative: `[B, N]` bool with at most `num_samples` true per row.
    Returns:
      `indices [B, num_samples]` int32 into N, `valid [B, num_samples]` bool,
      `is_positive [B, num_samples]` bool. Invalid slots point at index 0.
    """
    # Ties between equal keys are broken by a small decreasing ramp so the order is stable.
    n = backend.static_dim(sampled_positive, 1)
    ramp = 1.0 - ops.cast(ops.arange(n), "float32") / ops.cast(n + 1, "float32")
    keys = (2.0 * ops.cast(sampled_positive, "float32") + ops.cast(sampled_negative, "float32")
            + 0.5 * ramp[None, :])
    values, indices = ops.top_k(keys, k=num_samples, sorted=True)
    valid = values >= 1.0
    is_positive = values >= 2.0
    return ops.where(valid, ops.cast(indices, "int32"), 0), valid, is_positive
