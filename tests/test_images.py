"""Reading image files: bad files named, 16-bit scaled, a pixel limit; `predict` and `evaluate`
carry on past bad files and name them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_maskrcnn.data.images import BadImageError, load_rgb_image

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_MASKRCNN_DISABLE_CUSTOM_OP": "1"}


def bad_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 50, 3), 100, np.uint8)).save(good)
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    return good, text, truncated, tmp_path / "missing.jpg"


def test_each_bad_kind_is_named(tmp_path):
    good, text, truncated, missing = bad_files(tmp_path)
    assert load_rgb_image(good).shape == (40, 50, 3)
    for path, reason in ((text, "not an image"), (truncated, "truncated"),
                         (missing, "file not found")):
        with pytest.raises(BadImageError, match=reason) as err:
            load_rgb_image(path)
        assert str(path) in str(err.value)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    image = load_rgb_image(path)
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
    np.testing.assert_array_equal(image[0, :, 0], [0, 1, 128, 255])


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(path)
    with pytest.raises(BadImageError, match="above the limit of 1000000"):
        load_rgb_image(path, max_pixels=1_000_000)
    assert load_rgb_image(path, max_pixels=None).shape == (2000, 3000, 3)


def test_our_pixel_limit_not_pils(tmp_path, monkeypatch):
    """PIL's process-wide bomb limit neither names itself nor refuses what max_pixels allows
    (a 12000 x 12000 PNG is over PIL's 89M default; here PIL's limit is lowered instead)."""
    path = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match="6000000 pixels is above the limit of 5000000"):
        load_rgb_image(path, max_pixels=5_000_000)
    assert load_rgb_image(path, max_pixels=10_000_000).shape == (2000, 3000, 3)
    assert load_rgb_image(path, max_pixels=None).shape == (2000, 3000, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000


@pytest.fixture(scope="module")
def shapes_model_dir(tmp_path_factory):
    from keras_maskrcnn.builder import build_model
    from keras_maskrcnn.config import get_config
    from keras_maskrcnn.saving import save_model_dir

    directory = tmp_path_factory.mktemp("model")
    save_model_dir(build_model(get_config("shapes")), directory)
    return directory


def test_predict_names_bad_files_and_writes_the_rest(tmp_path, shapes_model_dir):
    (tmp_path / "in").mkdir()
    good, text, truncated, missing = bad_files(tmp_path / "in")
    cmd = [sys.executable, "-m", "keras_maskrcnn.cli", "predict", "--model",
           str(shapes_model_dir), str(good), str(text), str(truncated), str(missing),
           "--output", str(tmp_path / "out"), "--score-threshold", "0"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 1, result.stderr
    for path in (text, truncated, missing):
        assert str(path) in result.stderr
    assert "Traceback" not in result.stderr
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert {r["file_name"] for r in records} <= {good.name}
    assert (tmp_path / "out" / "good.png").exists()


def test_predict_accepts_folders_and_globs(tmp_path, shapes_model_dir):
    from keras_maskrcnn.files import expand_image_paths

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        (folder / name).write_bytes(b"x")
    assert [p.name for p in expand_image_paths([folder])] == ["a.jpg", "b.png"]
    assert [p.name for p in expand_image_paths([str(folder / "*.png")])] == ["b.png"]
    assert [p.name for p in expand_image_paths([folder, folder / "a.jpg"])] == ["a.jpg", "b.png"]


def test_evaluate_skips_and_names_a_bad_file(tmp_path, coco10_dir, caplog):
    import shutil

    from keras_maskrcnn.builder import build_model
    from keras_maskrcnn.config import get_config
    from keras_maskrcnn.data import CocoDataset
    from keras_maskrcnn.inference import evaluate

    images = tmp_path / "images"
    shutil.copytree(coco10_dir / "images", images)
    data = json.loads((coco10_dir / "annotations.json").read_text())
    victim = images / data["images"][0]["file_name"]
    victim.write_bytes(victim.read_bytes()[:500])
    source = CocoDataset(coco10_dir / "annotations.json", images)
    config = get_config("shapes", num_classes=source.num_classes,
                        class_names=tuple(source.class_names),
                        category_ids=tuple(source.label_to_category_id[k]
                                           for k in range(1, source.num_classes + 1)))
    with caplog.at_level("WARNING", logger="keras_maskrcnn"):
        metrics = evaluate(build_model(config), source, max_images=3, verbose=False)
    assert "segm" in metrics and "bbox" in metrics
    assert str(victim) in caplog.text and "1 of 3 images" in caplog.text
