"""torchvision's published COCO Mask R-CNN weights by name: download, check, cache, convert.

`keras-maskrcnn convert torchvision --weights coco-v1|coco-v2` downloads the file torchvision
publishes for `MaskRCNN_ResNet50_FPN_Weights.COCO_V1` ("coco-v1", box AP 37.9 / mask AP 34.6)
or `MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1` ("coco-v2", 47.4 / 41.8), checks its SHA-256
against the 8 hex digits that torchvision's file name carries (torch.hub's `check_hash`
convention), keeps it in the cache and converts it (`convert.torchvision.convert_torchvision`)
into the model directory `<cache>/models/<name>/`. Afterwards `predict --model coco-v2` (and
`evaluate`, `export`) finds that directory through `resolve_model`.

The cache is `$KERAS_MASKRCNN_CACHE`, else `$XDG_CACHE_HOME/keras_maskrcnn`, else
`~/.cache/keras_maskrcnn`: `weights/<torchvision file name>` and `models/<name>/`. Downloads go
to a temporary name beside the final one and are renamed into place only once the checksum
matches (`atomic.atomic_path`), so an interrupted download never leaves a file that looks
complete. Importing this module imports neither TensorFlow nor torch; reading a .pth file needs
torch (`pip install -e .[parity]`), the converted model does not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from keras_maskrcnn.atomic import atomic_path
from keras_maskrcnn.saving import MODEL_FILES

CACHE_ENV = "KERAS_MASKRCNN_CACHE"
CHUNK = 1 << 20



@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """One published torchvision weights file and how to convert it."""

    name: str
    url: str
    sha256_prefix: str  # the hex digits after the last "-" of the file name
    v2: bool
    frozen_bn_eps: float  # eps of the file's FrozenBatchNorm2d layers (v1: overwrite_eps 0.0)
    size_mib: float
    description: str

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# torchvision 0.29 torchvision/models/detection/mask_rcnn.py. v1 runs its FrozenBatchNorm2d
# backbone with eps 0 (`overwrite_eps(model, 0.0)`); v2 uses nn.BatchNorm2d everywhere (eps 1e-5).
PRETRAINED: dict[str, PretrainedWeights] = {
    "coco-v1": PretrainedWeights(
        "coco-v1", "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
        "bf2d0c1e", v2=False, frozen_bn_eps=0.0, size_mib=169.84,
        description="torchvision maskrcnn_resnet50_fpn COCO_V1 (box AP 37.9, mask AP 34.6)"),
    "coco-v2": PretrainedWeights(
        "coco-v2",
        "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth",
        "73cbd019", v2=True, frozen_bn_eps=1e-5, size_mib=177.22,
        description="torchvision maskrcnn_resnet50_fpn_v2 COCO_V1 (box AP 47.4, mask AP 41.8)"),
}
NAMES = tuple(PRETRAINED)


class DownloadError(RuntimeError):
    """The weights could not be fetched (network, HTTP or file error)."""


class ChecksumError(ValueError):
    """A downloaded or cached weights file does not have the published SHA-256."""


class NotCachedError(FileNotFoundError):
    """A pretrained name was given but neither its model nor its weights are in the cache."""


def cache_dir() -> Path:
    """The cache folder (module doc); not created here."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "keras_maskrcnn"


def _entry(name: str) -> PretrainedWeights:
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained weights {name!r}; known: {', '.join(NAMES)}")
    return PRETRAINED[name]


def weights_path(name: str) -> Path:
    """Where the torchvision file of `name` is cached."""
    return cache_dir() / "weights" / _entry(name).file_name


def model_path(name: str) -> Path:
    """Where the converted model directory of `name` is cached."""
    _entry(name)
    return cache_dir() / "models" / name


def _is_model_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in MODEL_FILES)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_digest(entry: PretrainedWeights, digest: str, what: str, hint: str) -> None:
    if not digest.startswith(entry.sha256_prefix):
        raise ChecksumError(
            f"{what}: SHA-256 {digest[:16]}... does not start with {entry.sha256_prefix} "
            f"(the published {entry.file_name}): {hint}")


def _check_cached(entry: PretrainedWeights, path: Path) -> None:
    _check_digest(entry, sha256_file(path), f"cached {path}",
                  f"the file is corrupt or not torchvision's; delete it and run "
                  f"`convert_pretrained('{entry.name}')` to download it again")


class _Progress:
    """One progress line on stderr, rewritten in place at most 4 times a second."""

    def __init__(self, label: str, total: int | None, stream=None):
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.last = 0.0

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last >= 0.25:
            self.last = now
            self._write()

    def _write(self, end: str = "") -> None:
        mib = self.done / 2**20
        if self.total:
            text = f"{mib:.1f} / {self.total / 2**20:.1f} MiB ({100 * self.done / self.total:.0f}%)"
        else:
            text = f"{mib:.1f} MiB"
        self.stream.write(f"\r{self.label}: {text}{end}")
        self.stream.flush()

    def close(self) -> None:
        self._write("\n")


def download_weights(name: str, progress: bool = True, timeout: float = 60.0) -> Path:
    """The cached torchvision file of `name`, downloaded first if needed.

    A cached file is checked (SHA-256 prefix) before it is returned; a downloaded one before it
    is renamed into the cache. Raises `DownloadError` (one line: what failed, the URL, where
    the file may be put by hand) or `ChecksumError`.
    """
    entry = _entry(name)
    path = weights_path(name)
    if path.is_file():
        _check_cached(entry, path)
        return path
    digest = hashlib.sha256()
    try:
        with atomic_path(path) as tmp:
            with urllib.request.urlopen(entry.url, timeout=timeout) as response, \
                    open(tmp, "wb") as out:
                length = response.headers.get("Content-Length") if response.headers else None
                bar = _Progress(f"downloading {entry.file_name}",
                                int(length) if length else None) if progress else None
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    digest.update(block)
                    if bar:
                        bar.update(len(block))
                if bar:
                    bar.close()
            _check_digest(entry, digest.hexdigest(), f"downloaded {entry.url}",
                          "the download is corrupt or the file was changed; nothing was kept")
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        reason = getattr(err, "reason", None) or err
        raise DownloadError(
            f"could not download {name} weights from {entry.url}: {reason} (check the network, "
            f"or download the file by hand to {path})") from err
    return path


def convert_pretrained(name: str, output: str | Path | None = None, download: bool = True,
                       progress: bool = True, **convert_options) -> Path:
    """Converts the torchvision weights of `name` into a model directory.

    Args:
        name: "coco-v1" or "coco-v2".
        output: the model directory to write; default `model_path(name)` (the cache), which
            `resolve_model(name)` then finds.
        download: fetch the weights if they are not cached (else NotCachedError).
        progress: print the download progress line.
        convert_options: passed to `convert_torchvision` (min_size, max_size, image_size,
            frozen_bn_eps; default the published file's eps).

    Returns:
        The model directory (written aside and renamed into place).
    """
    entry = _entry(name)
    if download:
        source = download_weights(name, progress=progress)
    else:
        source = weights_path(name)
        if not source.is_file():
            raise NotCachedError(_not_cached_message(name))
        _check_cached(entry, source)
    from keras_maskrcnn.convert.torchvision import convert_torchvision

    options = {"frozen_bn_eps": entry.frozen_bn_eps, **convert_options}
    output = Path(output) if output is not None else model_path(name)
    with atomic_path(output) as tmp:
        convert_torchvision(source, tmp, v2=entry.v2, **options)
    return output


def _not_cached_message(name: str) -> str:
    entry = _entry(name)
    return (f"pretrained model {name!r} is not in the cache ({cache_dir()}): run "
            f"`convert_pretrained('{name}')` once (downloads "
            f"{entry.size_mib:.0f} MiB: {entry.description})")


def resolve_model(name_or_dir: str | Path) -> Path:
    """The model directory meant by a `model` argument: an existing directory as given; a pretrained
    name ("coco-v1", "coco-v2") as its cached model directory, converted first when only the
    torchvision file is cached (NotCachedError, naming the convert command, when neither is);
    anything else as given (loading it then reports what is missing)."""
    path = Path(name_or_dir)
    if path.is_dir() or str(name_or_dir) not in PRETRAINED:
        return path
    name = str(name_or_dir)
    directory = model_path(name)
    if _is_model_dir(directory):
        return directory
    if weights_path(name).is_file():
        print(f"converting the cached {name} weights to {directory} (once)", file=sys.stderr)
        return convert_pretrained(name, download=False)
    raise NotCachedError(_not_cached_message(name))
