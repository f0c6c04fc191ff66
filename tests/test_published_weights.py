"""Pretrained torchvision weights by name (`keras_maskrcnn.convert.published`): download with checksum,
cache, convert, and `--model coco-v1` resolution in predict / evaluate / export.

Nothing is downloaded: the URL table is pointed at local `file://` URLs (a few bytes for the
download checks; a synthetic torchvision v1 state dict, saved as .npz so torch is not needed, for
the conversion), and one case refuses a connection on the loopback address.
"""

import dataclasses
import hashlib
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_torchvision_convert import synthetic_v1_state

from keras_maskrcnn.cli import main
from keras_maskrcnn.convert import published as pretrained
from keras_maskrcnn.convert.published import (
    PRETRAINED,
    ChecksumError,
    DownloadError,
    NotCachedError,
    download_weights,
    resolve_model,
)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(pretrained.CACHE_ENV, str(folder))
    return folder


def _serve(monkeypatch, tmp_path, payload: bytes, name="coco-v1", prefix=None, suffix=".pth"):
    """Points `name` at a local file holding `payload`; prefix defaults to its true SHA-256."""
    prefix = prefix or hashlib.sha256(payload).hexdigest()[:8]
    source = tmp_path / "server" / f"maskrcnn_resnet50_fpn_coco-{prefix}{suffix}"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(payload)
    entry = dataclasses.replace(PRETRAINED[name], url=source.as_uri(), sha256_prefix=prefix)
    monkeypatch.setitem(PRETRAINED, name, entry)
    return source


def test_published_table_matches_torchvision_file_names():
    for name, entry in PRETRAINED.items():
        assert entry.url.startswith("https://download.pytorch.org/models/maskrcnn_resnet50_fpn")
        assert entry.file_name.endswith(f"-{entry.sha256_prefix}.pth"), name
    assert PRETRAINED["coco-v1"].sha256_prefix == "bf2d0c1e" and not PRETRAINED["coco-v1"].v2
    assert PRETRAINED["coco-v2"].sha256_prefix == "73cbd019" and PRETRAINED["coco-v2"].v2


def test_cache_folder_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "c"))
    assert pretrained.model_path("coco-v2") == tmp_path / "c" / "models" / "coco-v2"
    monkeypatch.delenv(pretrained.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pretrained.cache_dir() == tmp_path / "xdg" / "keras_maskrcnn"


def test_download_checks_the_checksum_and_caches(cache, tmp_path, monkeypatch, capsys):
    payload = b"weights " * 100_000
    source = _serve(monkeypatch, tmp_path, payload)
    path = download_weights("coco-v1")
    assert path == cache / "weights" / source.name and path.read_bytes() == payload
    assert "downloading" in capsys.readouterr().err
    source.unlink()  # a cache hit opens no URL

    def no_network(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert download_weights("coco-v1") == path
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_checksum_mismatch_leaves_nothing(cache, tmp_path, monkeypatch):
    _serve(monkeypatch, tmp_path, b"not torchvision's file", prefix="0badc0de")
    with pytest.raises(ChecksumError, match="does not start with 0badc0de"):
        download_weights("coco-v1", progress=False)
    assert not list((cache / "weights").iterdir())  # neither the file nor its temporary


def test_corrupt_cached_file_is_refused(cache, tmp_path, monkeypatch):
    _serve(monkeypatch, tmp_path, b"good")
    path = download_weights("coco-v1", progress=False)
    path.write_bytes(b"bad")
    with pytest.raises(ChecksumError, match="cached"):
        download_weights("coco-v1", progress=False)


def test_network_failure_is_one_line(cache, monkeypatch, capsys):
    entry = dataclasses.replace(PRETRAINED["coco-v1"],
                                url="http://127.0.0.1:9/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth")
    monkeypatch.setitem(PRETRAINED, "coco-v1", entry)
    with pytest.raises(DownloadError, match="could not download coco-v1"):
        download_weights("coco-v1", timeout=5)
    assert main(["convert", "torchvision", "--weights", "coco-v1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("keras-maskrcnn convert: error: could not download")
    assert not (cache / "weights").exists() or not list((cache / "weights").iterdir())


def test_resolve_model_names_and_directories(cache, tmp_path, monkeypatch):
    folder = tmp_path / "coco-v1"  # an existing directory wins over the name
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model("coco-v1") == Path("coco-v1")
    assert resolve_model(str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"
    with pytest.raises(NotCachedError, match=r"`convert_pretrained\('coco-v2'\)`"):
        resolve_model("coco-v2")
    cached = pretrained.model_path("coco-v2")
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    with pytest.raises(NotCachedError):  # half a model directory is not a cached model
        resolve_model("coco-v2")
    (cached / "model.weights.h5").write_bytes(b"")
    assert resolve_model("coco-v2") == cached


@pytest.mark.parametrize("command", [
    ["predict", "--model", "coco-v2", "x.jpg", "--output", "out"],
    ["evaluate", "--model", "coco-v2", "--dataset", "shapes"],
    ["export", "--model", "coco-v2", "--format", "saved_model", "--output", "sm"],
])
def test_cli_names_the_convert_command(cache, command, capsys):
    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keras-maskrcnn convert torchvision --weights coco-v2" in err[0]


def test_convert_then_predict_by_name(cache, tmp_path, monkeypatch, coco10_dir, capsys):
    """`convert torchvision --weights coco-v1` -> the cache; `predict --model coco-v1`; after
    the model folder is removed, the cached weights are converted again on first use."""
    state = synthetic_v1_state(4, np.random.default_rng(0))
    buffer = tmp_path / "state.npz"
    np.savez(buffer, **state)
    _serve(monkeypatch, tmp_path, buffer.read_bytes(), suffix=".npz")
    buffer.unlink()
    assert main(["convert", "torchvision", "--weights", "coco-v1", "--min-size", "64",
                 "--max-size", "96"]) == 0
    out = capsys.readouterr().out
    assert "use it as --model coco-v1" in out
    directory = pretrained.model_path("coco-v1")
    config = json.loads((directory / "config.json").read_text())
    assert (config["name"], config["num_classes"], config["max_size"]) == (
        "torchvision_r50_fpn", 3, 96)
    assert resolve_model("coco-v1") == directory
    photo = sorted((coco10_dir / "images").glob("*.jpg"))[0]
    assert main(["predict", "--model", "coco-v1", str(photo), "--output",
                 str(tmp_path / "pred"), "--no-draw"]) == 0
    assert (tmp_path / "pred" / "predictions.json").exists()

    import shutil

    shutil.rmtree(directory)
    assert resolve_model("coco-v1") == directory  # converted from the cached file
    assert "converting the cached coco-v1 weights" in capsys.readouterr().err
    assert json.loads((directory / "config.json").read_text())["max_size"] == 1333
    assert not [p for p in directory.parent.iterdir() if ".tmp-" in p.name]


def test_convert_cli_argument_errors(cache):
    with pytest.raises(SystemExit, match="not both"):
        main(["convert", "torchvision", "state.pth", "--weights", "coco-v1"])
    with pytest.raises(SystemExit, match="drop --v1/--v2"):
        main(["convert", "torchvision", "--weights", "coco-v1", "--v2"])
    with pytest.raises(SystemExit, match="needs STATE_DICT.pth and --output"):
        main(["convert", "torchvision", "state.pth"])
