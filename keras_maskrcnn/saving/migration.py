"""Older weight files moved to the current layout: one module for every rename of the past.

Keras 3 `save_weights` stores a variable under the path of attribute names from the model down
to its layer (`backbone/body/layers/conv2d/vars/0`); inside lists (a functional model's or a
`keras.Model`'s `layers`) a layer is named by its snake-cased class name
(`layers/rpn/head/convs/conv2d/vars/0`, `layers/standard_ro_i_heads/box_head/fcs/dense_1/vars/0`).
Three generations of files are upgraded here, recognised from the file itself (its paths), never
from a version number, and applying the rules twice changes nothing:

1. Before the heads were unified (`ConvRPNHead`, `ConvFCBoxHead`, `NormMaskHead`: torchvision v2
   configs and any config with several RPN convs, a conv box head or normalized heads):
       .../conv_rpn_head/...               -> .../rpn_head/...
       .../norm_mask_head/...              -> .../mask_head/...
       .../conv_fc_box_head/...            -> .../box_head/...
   (their `box_head/fcs/dense...` and `rpn_head/convs/conv2d...` are the current paths).
2. While the RPN head's first conv was also its attribute `conv` and the box head's fcs its
   attributes `fc1`, `fc2`, ... (Keras saved each layer under the first of its names):
       .../rpn_head/conv/..., .../rpn/head/conv/...  -> .../convs/conv2d/...
       .../box_head/fc1/...                          -> .../box_head/fcs/dense/...
       .../box_head/fc{k}/...                        -> .../box_head/fcs/dense_{k - 1}/...
3. Before the model was assembled from parts (every layer an attribute of `MaskRCNN`; the ones
   named after `inference_model` saved under its `layers`):
       backbone/layers/...                         -> backbone/body/layers/...
       fpn/layers/...                              -> backbone/fpn/layers/...
       [inference_model/layers/]rpn_head/...       -> layers/rpn/head/...
       [inference_model/layers/]box_head/...       -> layers/<roi heads>/box_head/...
       [inference_model/layers/]mask_head/...      -> layers/<roi heads>/mask_head/...
       [inference_model/layers/]res5_head/...      -> layers/res5_ro_i_heads/res5_head/...
   where <roi heads> is `res5_ro_i_heads` for a C4 file (it holds `res5_head`), else
   `standard_ro_i_heads`.

Training checkpoints written before the `saving` package kept their config in the HDF5
attribute `config` (`LEGACY_CONFIG_ATTRIBUTES`), model directories already in
`keras_maskrcnn_config`; both are read.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import h5py

LEGACY_CONFIG_ATTRIBUTES = ("config",)
_HEAD_RULES = (
    (re.compile(r"(^|/)conv_rpn_head(/|$)"), r"\1rpn_head\2"),
    (re.compile(r"(^|/)norm_mask_head(/|$)"), r"\1mask_head\2"),
    (re.compile(r"(^|/)conv_fc_box_head(/|$)"), r"\1box_head\2"),
    (re.compile(r"(^|/)(rpn_head|rpn/head)/conv(/|$)"), r"\1\2/convs/conv2d\3"),
    (re.compile(r"(^|/)box_head/fc(\d+)(/|$)"),
     lambda m: f"{m[1]}box_head/fcs/dense{_suffix(int(m[2]) - 1)}{m[3]}"),
)


def _suffix(index: int) -> str:
    """Keras' name of the `index`-th layer of a class in a list: "", "_1", "_2", ..."""
    return f"_{index}" if index else ""


_FLAT = r"^(?:inference_model/layers/)?"


def _part_rules(roi_heads: str) -> tuple:
    return (
        (re.compile(r"^backbone/layers/"), "backbone/body/layers/"),
        (re.compile(r"^fpn/"), "backbone/fpn/"),
        (re.compile(_FLAT + r"rpn_head/"), "layers/rpn/head/"),
        (re.compile(_FLAT + r"(box_head|mask_head|res5_head)/"), rf"layers/{roi_heads}/\1/"),
    )


def legacy_path(path: str, c4: bool = False) -> str:
    """The current path of a weight-file path (`a/b/vars` or `a/b/vars/0`) of a file written
    before the head unification, with the head aliases, or before the parts (`c4`: the file
    holds a res5 head); current paths map to themselves."""
    for pattern, repl in _HEAD_RULES:
        path = pattern.sub(repl, path)
    if path.startswith(("backbone/body/", "layers/")):
        return path
    for pattern, repl in _part_rules("res5_ro_i_heads" if c4 else "standard_ro_i_heads"):
        path = pattern.sub(repl, path)
    return path


def legacy_renames(weights_path: str | Path) -> dict[str, str]:
    """`{old: new}` for every `vars` group of a Keras `.weights.h5` file that sits at a legacy
    path (empty for a file in the current layout)."""
    groups: list[str] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Group) and name.rsplit("/", 1)[-1] == "vars":
            groups.append(name)

    with h5py.File(weights_path, "r") as f:
        f.visititems(visit)
    c4 = any("res5_head/" in name for name in groups)
    renames = {name: legacy_path(name, c4) for name in groups}
    return {old: new for old, new in renames.items() if old != new}


def upgrade_weights_file(weights_path: str | Path, output: str | Path | None = None) -> bool:
    """Moves the variables of a legacy weights file to the current paths.

    Writes `output`, or replaces `weights_path` itself (atomically) when `output` is None; file
    attributes, variable attributes and values are kept. Returns False, writing nothing, when the
    file is already in the current layout. Raises ValueError if a current path is taken twice.
    """
    weights_path = Path(weights_path)
    renames = legacy_renames(weights_path)
    if not renames:
        return False
    target = Path(output) if output is not None else weights_path
    fd, scratch = tempfile.mkstemp(suffix=".weights.h5", dir=target.parent)
    os.close(fd)
    try:
        shutil.copyfile(weights_path, scratch)
        with h5py.File(scratch, "a") as f:
            for old, new in renames.items():
                if new in f:
                    raise ValueError(f"{weights_path}: legacy weights {old!r} map to {new!r}, "
                                     "which the file already holds")
                f.move(old, new)
            _prune_empty_groups(f)
        os.replace(scratch, target)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
    return True


@contextlib.contextmanager
def current_layout(weights_path: str | Path) -> Iterator[Path]:
    """Context manager yielding the path of `weights_path` in the current layout: the file itself
    when it already is, else an upgraded temporary copy (removed on exit)."""
    weights_path = Path(weights_path)
    if not legacy_renames(weights_path):
        yield weights_path
        return
    with tempfile.TemporaryDirectory() as scratch:
        upgraded = Path(scratch) / weights_path.name
        upgrade_weights_file(weights_path, upgraded)
        yield upgraded


def _prune_empty_groups(group: h5py.Group) -> None:
    """Deletes the groups without a `vars` group below them (the legacy parents left behind)."""
    for name in list(group):
        child = group[name]
        if isinstance(child, h5py.Group) and name != "vars":
            if _holds_vars(child):
                _prune_empty_groups(child)
            else:
                del group[name]


def _holds_vars(group: h5py.Group) -> bool:
    return "vars" in group or any(isinstance(o, h5py.Group) and _holds_vars(o)
                                  for o in group.values())
