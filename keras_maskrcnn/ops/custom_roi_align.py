"""Optional compiled RoIAlign (TensorFlow custom op, CPU) with the portable path as fallback.

TensorFlow only. TensorFlow is imported on first use, never when this module is imported, so
that `keras_maskrcnn.ops` imports on JAX / PyTorch; there `is_available()` is False.

The C++ source ships with the package (``keras_maskrcnn/ops/csrc/roi_align_op.cc``) and is
compiled on demand with g++ against the installed TensorFlow:

    python -m keras_maskrcnn.ops.custom_roi_align --build

The library ``_kmr_roi_align.so`` goes next to this module (or, when the package directory is
read-only, to ``~/.cache/keras_maskrcnn/custom_ops``; ``KERAS_MASKRCNN_CUSTOM_OP_DIR`` overrides
both). A stamp file beside it records the TensorFlow version and the source hash; a library
built from another source or for another TensorFlow is stale and is neither loaded nor reused.

Environment:
    KERAS_MASKRCNN_DISABLE_CUSTOM_OP=1  never use the op (``is_available()`` is False).
    KERAS_MASKRCNN_BUILD_CUSTOM_OP=1    let ``is_available()`` compile a missing / stale library.
    CXX                                 compiler to use instead of ``g++``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keras_maskrcnn import backend
from keras_maskrcnn.ops.roi_common import check_sampling_ratio, check_scale, pair

__all__ = [
    "build",
    "implementation_in_use",
    "is_available",
    "library_path",
    "multilevel_roi_align_custom",
    "reset_cache",
    "roi_align_custom",
    "source_path",
    "unavailable_reason",
]

_LOG = logging.getLogger(__name__)
_LIB_NAME = "_kmr_roi_align.so"
_STAMP_NAME = "_kmr_roi_align.stamp.json"
_DISABLE_ENV = "KERAS_MASKRCNN_DISABLE_CUSTOM_OP"
_BUILD_ENV = "KERAS_MASKRCNN_BUILD_CUSTOM_OP"
_DIR_ENV = "KERAS_MASKRCNN_CUSTOM_OP_DIR"
_SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")


class _LazyTensorFlow:
    """`tf` of this module: the `tensorflow` module, imported at the first attribute read."""

    def __getattr__(self, name: str) -> Any:
        return getattr(backend.tensorflow(), name)


tf = _LazyTensorFlow()

_lock = threading.Lock()
_state: dict[str, Any] = {"checked": False, "module": None, "reason": ""}


# --------------------------------------------------------------------------------------------
# Locating, building and loading the library.


def source_path() -> Path:
    """Path of the C++ source shipped with the package."""
    return Path(__file__).resolve().parent / "csrc" / "roi_align_op.cc"


def _candidate_dirs() -> list[Path]:
    if os.environ.get(_DIR_ENV):
        return [Path(os.environ[_DIR_ENV]).expanduser()]
    return [
        Path(__file__).resolve().parent,
        Path.home() / ".cache" / "keras_maskrcnn" / "custom_ops",
    ]


def _expected_stamp() -> dict[str, str]:
    digest = hashlib.sha256(source_path().read_bytes()).hexdigest()
    return {"tensorflow": tf.__version__, "source_sha256": digest}


def _is_fresh(directory: Path) -> bool:
    lib, stamp = directory / _LIB_NAME, directory / _STAMP_NAME
    if not (lib.is_file() and stamp.is_file()):
        return False
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    expected = _expected_stamp()
    same = all(recorded.get(k) == v for k, v in expected.items())
    return same and lib.stat().st_mtime >= source_path().stat().st_mtime


def library_path() -> Path | None:
    """Path of an up-to-date compiled library, or None when none was built for this setup."""
    for directory in _candidate_dirs():
        if _is_fresh(directory):
            return directory / _LIB_NAME
    return None


def _writable_dir() -> Path:
    for directory in _candidate_dirs():
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK):
            return directory
    raise RuntimeError(f"no writable directory for the custom op among {_candidate_dirs()}")


def _compile_command(source: Path, output: Path) -> list[str]:
    compiler = os.environ.get("CXX", "g++")
    # No -march=native: the library may run on another CPU; hot loops carry their own
    # AVX2 / AVX-512 clones selected at load time.
    return [
        compiler,
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-O3",
        "-DNDEBUG",
        "-Wno-deprecated-declarations",
        *tf.sysconfig.get_compile_flags(),
        str(source),
        "-o",
        str(output),
        *tf.sysconfig.get_link_flags(),
    ]


def build(verbose: bool = True, force: bool = False) -> Path:
    """Compile the op library unless an up-to-date one exists; returns the library path.

    Args:
        verbose: print the compiler command and its output.
        force: rebuild even when the library is up to date.

    Raises:
        RuntimeError: no compiler (``g++`` or ``$CXX``) or the compilation failed.
    """
    if not force and (existing := library_path()) is not None:
        return existing
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise RuntimeError(
            f"C++ compiler {compiler!r} not found: install g++ (or set CXX) to build the "
            "RoIAlign custom op"
        )
    directory = _writable_dir()
    # The lock lives in the temp dir so that the package directory only gains the library and
    # its stamp.
    key = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"kmr_roi_align_{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same library
        if not force and _is_fresh(directory):
            return directory / _LIB_NAME
        stamp = _expected_stamp()
        fd, tmp_name = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            cmd = _compile_command(source_path(), tmp)
            if verbose:
                print(" ".join(cmd), flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if verbose and proc.stdout:
                print(proc.stdout, flush=True)
            if proc.returncode != 0:
                tail = proc.stderr[-4000:]
                raise RuntimeError(f"building the RoIAlign custom op failed:\n{tail}")
            os.replace(tmp, directory / _LIB_NAME)
        finally:
            tmp.unlink(missing_ok=True)
        (directory / _STAMP_NAME).write_text(json.dumps(stamp, indent=1))
    if verbose:
        print(f"built {directory / _LIB_NAME}", flush=True)
    return directory / _LIB_NAME


def _disabled() -> bool:
    return os.environ.get(_DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _other_backend() -> str:
    """"" on the TensorFlow backend, else why the op cannot serve this backend."""
    if backend.is_tensorflow():
        return ""
    return f"the compiled op is TensorFlow-only and the Keras backend is {backend.name()!r}"


def _load() -> Any | None:
    """Load the op module once per process; None (with the reason logged once) on failure."""
    with _lock:
        if _state["checked"]:
            return _state["module"]
        _state["checked"] = True
        path = library_path()
        if path is None and os.environ.get(_BUILD_ENV, "") == "1":
            try:
                path = build(verbose=False)
            except RuntimeError as err:
                _state["reason"] = str(err)
        if path is None:
            _state["reason"] = _state["reason"] or (
                "RoIAlign custom op not built for this TensorFlow / source; run "
                "`python -m keras_maskrcnn.ops.custom_roi_align --build`"
            )
            _LOG.info("%s; using the pure-TF RoIAlign", _state["reason"])
            return None
        try:
            _state["module"] = tf.load_op_library(str(path))
            _register_gradients()
        except Exception as err:  # any load error means "unavailable"
            _state["reason"] = f"loading {path} failed: {err}"
            _LOG.warning("%s; using the pure-TF RoIAlign", _state["reason"])
        return _state["module"]


def reset_cache() -> None:
    """Forget the cached load result (tests, or after building in the same process)."""
    with _lock:
        _state.update(checked=False, module=None, reason="")


def is_available() -> bool:
    """True when the compiled op can be used in this process (loads it lazily, once; never on
    JAX / PyTorch)."""
    if _disabled() or _other_backend():
        return False
    return _load() is not None


def unavailable_reason() -> str:
    """Why ``is_available()`` is False ("" when it is True or was not asked yet)."""
    if _disabled():
        return f"disabled by {_DISABLE_ENV}"
    return _other_backend() or _state["reason"]


def implementation_in_use() -> str:
    """``"custom_op"`` when the compiled op is available, else ``"gather"`` (for logging)."""
    return "custom_op" if is_available() else "gather"


# --------------------------------------------------------------------------------------------
# The op.


def roi_align_custom(
    features: tf.Tensor,
    boxes: tf.Tensor,
    box_indices: tf.Tensor,
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> tf.Tensor:
    """RoIAlign with the compiled op; same semantics as ``torchvision.ops.roi_align``.

    Args:
        features: [B, H, W, C] float32, bfloat16 or float16 feature map (NHWC).
        boxes: [N, 4] float (y1, x1, y2, x2) in input pixels; cast to float32.
        box_indices: [N] int, image of each box in [0, B).
        output_size: int P or (PH, PW), the pooled size.
        spatial_scale: feature pixels per input pixel (1 / stride).
        sampling_ratio: samples per bin and axis; 0 = adaptive ceil(roi_size / P) per box.
        aligned: subtract 0.5 from scaled coordinates (half-pixel); False clamps RoI w/h to >= 1.

    Returns:
        [N, PH, PW, C] tensor of the features' dtype, each bin the mean of its bilinear samples.
        Differentiable with respect to ``features`` (boxes get no gradient, as in torchvision).

    Raises:
        RuntimeError: the op library is not available (see ``unavailable_reason()``).
    """
    pooled_h, pooled_w = pair(output_size)
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    spatial_scale = check_scale(spatial_scale)
    features = tf.convert_to_tensor(features)
    if features.dtype.name not in _SUPPORTED_DTYPES:
        raise TypeError(f"features must be float32, bfloat16 or float16, got {features.dtype.name}")
    if features.shape.rank is not None and features.shape.rank != 4:
        raise ValueError(f"features must be [B, H, W, C], got shape {features.shape}")
    boxes = tf.cast(boxes, tf.float32)
    box_indices = tf.cast(box_indices, tf.int32)
    if not is_available():
        raise RuntimeError(f"RoIAlign custom op unavailable: {unavailable_reason()}")
    return _load().kmr_roi_align(
        features,
        boxes,
        box_indices,
        pooled_height=pooled_h,
        pooled_width=pooled_w,
        spatial_scale=float(spatial_scale),
        sampling_ratio=int(sampling_ratio),
        aligned=bool(aligned),
    )


def multilevel_roi_align_custom(
    features: Sequence[tf.Tensor],
    boxes: tf.Tensor,
    box_indices: tf.Tensor,
    box_levels: tf.Tensor,
    output_size: int | Sequence[int],
    spatial_scales: Sequence[float],
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> tf.Tensor:
    """RoIAlign of every box on its own feature map, in one op call (no split / stitch).

    Box n is pooled exactly as ``roi_align_custom(features[l], ..., spatial_scale=
    spatial_scales[l])`` with ``l = box_levels[n]``.

    Args:
        features: L maps [B, H_l, W_l, C] (same B, C and dtype: float32, bfloat16 or float16).
        boxes: [N, 4] float (y1, x1, y2, x2) in input pixels; cast to float32.
        box_indices: [N] int, image of each box in [0, B).
        box_levels: [N] int, index in [0, L) of the map each box reads (not the FPN level k:
            for P2-P5 pass k - 2).
        output_size: int P or (PH, PW).
        spatial_scales: L floats, feature pixels per input pixel of each map (1 / stride).
        sampling_ratio, aligned: as in `roi_align_custom`.

    Returns:
        [N, PH, PW, C] in the features' dtype; differentiable w.r.t. every map.
    """
    pooled_h, pooled_w = pair(output_size)
    maps = [tf.convert_to_tensor(f) for f in features]
    scales = [float(s) for s in spatial_scales]
    if not maps:
        raise ValueError("features must hold at least one feature map")
    if len(scales) != len(maps):
        raise ValueError(
            f"spatial_scales must have one entry per feature map ({len(maps)}), got {len(scales)}"
        )
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    scales = [check_scale(s) for s in scales]
    if maps[0].dtype.name not in _SUPPORTED_DTYPES or any(f.dtype != maps[0].dtype for f in maps):
        raise TypeError(
            "features must share one dtype among float32, bfloat16 and float16, got "
            f"{[f.dtype.name for f in maps]}"
        )
    if not is_available():
        raise RuntimeError(f"RoIAlign custom op unavailable: {unavailable_reason()}")
    return _load().kmr_multi_level_roi_align(
        maps,
        tf.cast(boxes, tf.float32),
        tf.cast(box_indices, tf.int32),
        tf.cast(box_levels, tf.int32),
        pooled_height=pooled_h,
        pooled_width=pooled_w,
        spatial_scales=scales,
        sampling_ratio=int(sampling_ratio),
        aligned=bool(aligned),
    )


def _op_attrs(op: tf.Operation, scale_attr: str) -> dict[str, Any]:
    names = ("pooled_height", "pooled_width", "sampling_ratio", "aligned", scale_attr)
    return {name: op.get_attr(name) for name in names}


def _roi_align_grad(op: tf.Operation, grad: tf.Tensor) -> list[tf.Tensor | None]:
    features, boxes, box_indices = op.inputs
    d_features = _load().kmr_roi_align_grad(
        grad, boxes, box_indices, tf.shape(features, out_type=tf.int32),
        **_op_attrs(op, "spatial_scale"),
    )
    return [d_features, None, None]


def _roi_align_grad_grad(op: tf.Operation, grad: tf.Tensor) -> list[tf.Tensor | None]:
    # The gradient op is linear in `grads`; its adjoint is the forward op.
    _, boxes, box_indices, _ = op.inputs
    d_grads = _load().kmr_roi_align(grad, boxes, box_indices, **_op_attrs(op, "spatial_scale"))
    return [d_grads, None, None, None]


def _multilevel_grad(op: tf.Operation, grad: tf.Tensor) -> list[tf.Tensor | None]:
    num_levels = op.get_attr("num_levels")
    maps = op.inputs[:num_levels]
    boxes, box_indices, box_levels = op.inputs[num_levels:]
    d_maps = _load().kmr_multi_level_roi_align_grad(
        grad, boxes, box_indices, box_levels, [tf.shape(f, out_type=tf.int32) for f in maps],
        **_op_attrs(op, "spatial_scales"),
    )
    return [*d_maps, None, None, None]


def _multilevel_grad_grad(op: tf.Operation, *grads: tf.Tensor | None) -> list[tf.Tensor | None]:
    num_levels = op.get_attr("num_levels")
    _, boxes, box_indices, box_levels = op.inputs[:4]
    shapes = op.inputs[4:]
    maps = [
        tf.zeros(shape, op.outputs[0].dtype) if g is None else g
        for g, shape in zip(grads, shapes, strict=True)
    ]
    d_grads = _load().kmr_multi_level_roi_align(
        maps, boxes, box_indices, box_levels, **_op_attrs(op, "spatial_scales")
    )
    return [d_grads, None, None, None, *([None] * num_levels)]


def _register_gradients() -> None:
    for name, fn in (
        ("KmrRoiAlign", _roi_align_grad),
        ("KmrRoiAlignGrad", _roi_align_grad_grad),
        ("KmrMultiLevelRoiAlign", _multilevel_grad),
        ("KmrMultiLevelRoiAlignGrad", _multilevel_grad_grad),
    ):
        try:
            tf.RegisterGradient(name)(fn)
        except KeyError:  # already registered (module imported twice, e.g. run with -m)
            pass


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``--build`` compiles the library, ``--check`` reports availability."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true", help="compile the op if out of date")
    parser.add_argument("--force", action="store_true", help="recompile even if up to date")
    parser.add_argument("--check", action="store_true", help="print whether the op loads")
    args = parser.parse_args(argv)
    if not (args.build or args.force or args.check):
        parser.print_help()
        return 2
    if args.build or args.force:
        print(build(verbose=True, force=args.force))
    if args.check:
        reset_cache()
        ok = is_available()
        print("custom_op available" if ok else f"custom_op unavailable: {unavailable_reason()}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
