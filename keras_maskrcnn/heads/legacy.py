"""Weight files written before the head classes were unified.

Keras 3 `save_weights` stores a variable under the path of attribute names from the model down
to its layer (`box_head/fc1/vars/0`), except inside lists - the functional inference graph's
`layers` among them - where a layer is named by its snake-cased class name
(`inference_model/layers/rpn_head/...`). The unified `RPNHead`, `BoxHead` and `MaskHead` keep the
paths of the single-purpose v1 heads (`RPNHead.conv`, `BoxHead.fc1` / `fc2`, `MaskHead.convs`),
so model directories of v1 configs (presets `shapes`, `coco_*`, `torchvision_r50_fpn`) load
unchanged. Files written by the removed `ConvRPNHead`, `ConvFCBoxHead` and `NormMaskHead`
(torchvision v2 configs, and any config with several RPN convs, a conv box head, another fc count
or normalized heads) address those heads differently; `legacy_path` maps their paths to the
current ones:

    .../conv_rpn_head/convs/conv2d/...  -> .../rpn_head/conv/...
    .../conv_rpn_head/...               -> .../rpn_head/...
    .../norm_mask_head/...              -> .../mask_head/...
    .../conv_fc_box_head/...            -> .../box_head/...
    .../box_head/fcs/dense/...          -> .../box_head/fc1/...
    .../box_head/fcs/dense_{k}/...      -> .../box_head/fc{k + 1}/...

Current files never hold these paths (their class names are gone, and `conv` / `fc{i}` are saved
before the `convs` / `fcs` lists they alias), so the rule is recognised from the file itself,
whatever its config `version`, and applying it twice changes nothing.
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

_RULES = (
    (re.compile(r"(^|/)conv_rpn_head/convs/conv2d(/|$)"), r"\1rpn_head/conv\2"),
    (re.compile(r"(^|/)conv_rpn_head(/|$)"), r"\1rpn_head\2"),
    (re.compile(r"(^|/)norm_mask_head(/|$)"), r"\1mask_head\2"),
    (re.compile(r"(^|/)conv_fc_box_head(/|$)"), r"\1box_head\2"),
    (re.compile(r"(^|/)box_head/fcs/dense(/|$)"), r"\1box_head/fc1\2"),
    (re.compile(r"(^|/)box_head/fcs/dense_(\d+)(/|$)"),
     lambda m: f"{m[1]}box_head/fc{int(m[2]) + 1}{m[3]}"),
)


def legacy_path(path: str) -> str:
    """The current path of a weight-file path (`a/b/vars` or `a/b/vars/0`); current paths map
    to themselves."""
    for pattern, repl in _RULES:
        path = pattern.sub(repl, path)
    return path


def legacy_renames(weights_path: str | Path) -> dict[str, str]:
    """`{old: new}` for every `vars` group of a Keras `.weights.h5` file that sits at a legacy
    path (empty for a file in the current layout)."""
    renames: dict[str, str] = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Group) and name.rsplit("/", 1)[-1] == "vars":
            new = legacy_path(name)
            if new != name:
                renames[name] = new

    with h5py.File(weights_path, "r") as f:
        f.visititems(visit)
    return renames


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
