"""Conv + normalization stacks shared by the heads and the FPN: the allowed normalizations and the stack of
3x3 convs, each optionally followed by a BatchNorm, then ReLU.

With norm "bn" a conv has no bias (the BatchNorm's beta replaces it), as in torchvision's
`Conv2dNormActivation`; with "none" it has one. The BatchNorms use epsilon 1e-5 and momentum 0.9
(torchvision's `nn.BatchNorm2d` defaults, momentum counted the other way round).
"""

from __future__ import annotations

import keras
from keras import layers, ops

# "none": convs with a bias; "bn": BatchNorm after each conv, no bias.
NORMS = ("none", "bn")


def check_norm(norm: str) -> str:
    """`norm` if it is one of `NORMS`, else ValueError."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def msra_init() -> keras.initializers.Initializer:
    """He (MSRA) normal initialization with fan-out, Detectron2's for the head convs."""
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def batch_norm(name: str) -> layers.BatchNormalization:
    """The BatchNorm of the normalized heads and the FPN (eps 1e-5, momentum 0.9)."""
    return layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name)


def conv_norm_stack(count: int, filters: int, norm: str, kernel_initializer=None,
                    prefix: str = "conv") -> tuple[list[layers.Conv2D], list]:
    """`count` 3x3 "same" convs of `filters` channels and their norms.

    Returns `(convs, norms)`, two lists of length `count`; `norms[i]` is a BatchNormalization for
    norm "bn" and None for "none". Without norm a conv has a bias and applies the ReLU itself;
    with norm it has neither (see `apply_conv_norm_stack`). Layer names: `{prefix}{i + 1}` and
    `norm{i + 1}`.
    """
    check_norm(norm)
    plain = norm == "none"
    convs = [layers.Conv2D(filters, 3, padding="same", use_bias=plain,
                           activation="relu" if plain else None,
                           kernel_initializer=kernel_initializer or msra_init(),
                           name=f"{prefix}{i + 1}")
             for i in range(count)]
    norms = [batch_norm(f"norm{i + 1}") if norm == "bn" else None for i in range(count)]
    return convs, norms


def build_conv_norm_stack(convs, norms, channels: int) -> int:
    """Builds the stack for `channels` input channels; returns its output channel count."""
    for conv, norm in zip(convs, norms, strict=True):
        conv.build((None, None, None, channels))
        channels = conv.filters
        if norm is not None:
            norm.build((None, None, None, channels))
    return channels


def apply_conv_norm_stack(x, convs, norms, training=None):
    """`[N, H, W, C]` -> `[N, H, W, filters]` (x's dtype): conv, norm (batch statistics when
    `training`), ReLU, for each conv in turn."""
    for conv, norm in zip(convs, norms, strict=True):
        x = conv(x)  # with its ReLU when not normalized
        if norm is not None:
            x = ops.relu(norm(x, training=training))
    return x
