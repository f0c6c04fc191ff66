"""Reading a torch state dict into numpy arrays: a `.pth` file (`torch.save` of a state dict or
of a checkpoint holding it under "model" / "state_dict"; needs torch, read in a child process when
TensorFlow is already imported), an `.npz` file or a mapping; keys normalized to torchvision's
current names (`normalize_keys`). Errors are one line naming the file.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from keras_maskrcnn.extras import MissingExtraError, check_installed, install_hint

PARITY_HINT = install_hint("parity")


def load_state_dict(source: Mapping[str, Any] | str | Path) -> dict[str, np.ndarray]:
    """A torchvision state dict as float32/int numpy arrays, keys in current torchvision names.

    Args:
        source: a mapping of names to torch tensors or numpy arrays; the path of a `.pth` / `.pt`
            file written by `torch.save` (a state dict, or a checkpoint dict holding one under
            "model" or "state_dict"); or an `.npz` file of the arrays.

    Returns:
        dict name -> array; a "module." prefix (DataParallel) is removed and legacy names
        (torchvision < 0.13: `rpn.head.conv.weight`, `fpn.inner_blocks.0.weight`,
        `mask_head.mask_fcn1.weight`) are renamed to the current ones.
    """
    if isinstance(source, Mapping):
        state = {str(k): _to_numpy(v, str(k)) for k, v in _unwrap(source).items()}
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"state dict file not found: {path}")
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                state = {k: np.asarray(data[k]) for k in data.files}
        else:
            state = _read_torch_file(path)
    else:
        raise TypeError(
            "state_dict_or_path must be a mapping of arrays or tensors, or a .pth/.npz path, "
            f"got {type(source).__name__}")
    return normalize_keys(state)


def _unwrap(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    return obj


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; never import torch here
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as err:  # noqa: BLE001 - report which entry is not an array
        raise TypeError(
            f"state dict entry {name!r} is not an array ({type(value).__name__})") from err


# torch.load runs with weights_only=True: tensors, dicts and numbers only, no arbitrary pickles.
_LOAD_HINT = ("it must hold a state dict, or a checkpoint dict with it under 'model'; re-save a "
              "checkpoint holding other objects with torch.save(checkpoint['model'], path)")
_READ_SCRIPT = """
import sys
try:
    import torch
except ImportError:
    sys.exit(3)
import numpy as np
try:
    obj = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
except Exception as err:  # the parent makes it one line (torch_error_reason)
    sys.stderr.write(type(err).__name__ + ": " + str(err))
    sys.exit(4)
for key in ("model", "state_dict"):
    if isinstance(obj, dict) and isinstance(obj.get(key), dict):
        obj = obj[key]
np.savez(sys.argv[2], **{k: v.detach().cpu().numpy() for k, v in obj.items()
                         if isinstance(v, torch.Tensor)})
"""


def torch_error_reason(text: str) -> str:
    """One line of a torch.load error "Name: message" (torch's messages run to paragraphs and
    end in a documentation link): the name and the last line that says something."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    name = first.split(":", 1)[0].strip() if ":" in first else ""
    lines = [x.strip() for x in text.splitlines() if x.strip() and "http" not in x]
    last = lines[-1] if lines else ""
    return (last if not name or last.startswith(name) else f"{name}: {last}")[:300]


def _read_torch_file(path: Path) -> dict[str, np.ndarray]:
    """Reads a torch.save file with torch; in a subprocess when TensorFlow is already imported
    (torch imported after TensorFlow crashes the process)."""
    check_installed(("torch",), "parity", f"reading {path}", otherwise="or pass an .npz of arrays")
    if "tensorflow" in sys.modules and "torch" not in sys.modules:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "state.npz"
            done = subprocess.run([sys.executable, "-c", _READ_SCRIPT, str(path), str(out)],
                                  capture_output=True, text=True)
            if done.returncode == 3:
                raise MissingExtraError(f"reading {path} needs torch: {PARITY_HINT}")
            if done.returncode != 0:
                reason = torch_error_reason(done.stderr) or f"exit code {done.returncode}"
                raise ValueError(f"torch could not read {path} ({_LOAD_HINT}): {reason}")
            with np.load(out) as data:
                return {k: np.asarray(data[k]) for k in data.files}
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several unpickling errors
        reason = torch_error_reason(f"{type(err).__name__}: {err}")
        raise ValueError(f"torch could not read {path} ({_LOAD_HINT}): {reason}") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: v.detach().cpu().numpy() for k, v in _unwrap(obj).items()
            if isinstance(v, torch.Tensor)}


_LEGACY_RENAMES = (
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$"),
     r"backbone.fpn.\1_blocks.\2.0.\3"),
)
_LEGACY_MASK_FCN = re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$")


def normalize_keys(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strips a "module." prefix and renames legacy torchvision keys to the current names."""
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        for pattern, repl in _LEGACY_RENAMES:
            key = pattern.sub(repl, key)
        match = _LEGACY_MASK_FCN.match(key)
        if match:
            key = f"roi_heads.mask_head.{int(match.group(1)) - 1}.0.{match.group(2)}"
        out[key] = value
    return out
