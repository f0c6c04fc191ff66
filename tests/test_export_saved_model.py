"""SavedModel export: both signatures, loaded in a fresh TensorFlow-only process, match
`predict_images` of the Keras model with the per-image canvas, on each canvas bucket (landscape,
portrait, square); bad requests fail with clear messages, oversized files before they are
decoded (peak RSS measured); `--buckets square` is the one-canvas export of before;
saved_model_cli lists both signatures."""

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import noise_rect_image
from PIL import Image

from keras_maskrcnn.builder import build_model, model_for_canvas, rebuilt
from keras_maskrcnn.cli import main as cli_main
from keras_maskrcnn.config import get_config
from keras_maskrcnn.data.images import DEFAULT_MAX_IMAGE_PIXELS
from keras_maskrcnn.export import export_saved_model
from keras_maskrcnn.export.buckets import (
    auto_buckets,
    bucket_for,
    bucket_index_tf,
    missing_coverage,
    parse_buckets,
    square_bucket,
)
from keras_maskrcnn.export.image_header import encoded_image_sizes
from keras_maskrcnn.export.saved_model import EXPORT_METADATA_FILE, export_ready_model
from keras_maskrcnn.inference import predict_images
from keras_maskrcnn.saving import save_model_dir
from keras_maskrcnn.transform import canvas_for

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Tolerances: the export runs the same graph as the Keras model (boxes in pixels, scores and
# mask probabilities in [0, 1]); pasted masks may flip a pixel whose value is within float
# rounding of the threshold.
BOX_ATOL = 1e-3
PROB_ATOL = 1e-5
FULL_MASK_MISMATCH = 1e-3
# The oversized file: 12000 x 12000 RGB, 432 MB of uint8 pixels once decoded (1.7 GB as the
# float32 the resize reads); refused from its header, the peak RSS may grow by at most this.
HUGE_SIDE = 12000
MAX_RSS_GROWTH_MIB = 100

# Runs in a fresh interpreter with TensorFlow only: loads the SavedModel, calls each signature,
# provokes the bad-request errors and writes everything to an .npz + a JSON of messages.
FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf

path, out = sys.argv[1], sys.argv[2]
data = np.load(out + ".in.npz")
loaded = tf.saved_model.load(path)
default = loaded.signatures["serving_default"](images=tf.constant(data["batch"]))
square = loaded.signatures["serving_default"](images=tf.constant(data["square"][None]))
pngs = [bytes(data[k]) for k in ("png_a", "png_b", "png_c")]
bytes_out = loaded.signatures["serving_bytes"](image_bytes=tf.constant(pngs))
arrays = {f"default_{k}": v.numpy() for k, v in default.items()}
arrays.update({f"square_{k}": v.numpy() for k, v in square.items()})
arrays.update({f"bytes_{k}": v.numpy() for k, v in bytes_out.items()})
np.savez(out + ".npz", **arrays)

def error_of(fn):
    try:
        fn()
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {err}"
    return "no error"

sig, sig_bytes = loaded.signatures["serving_default"], loaded.signatures["serving_bytes"]

# The REST bodies of examples/tf_serving_request.py, decoded as TF Serving decodes JSON.
import base64, importlib.util
spec = importlib.util.spec_from_file_location("request_example", sys.argv[3])
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)
body = json.loads(json.dumps(example.default_request(list(data["batch"]))))
rest_default = sig(images=tf.constant(np.array(body["inputs"]["images"], np.uint8)))
body = json.loads(json.dumps(example.bytes_request(pngs)))
rest_bytes = sig_bytes(image_bytes=tf.constant(
    [base64.b64decode(row["image_bytes"]["b64"]) for row in body["instances"]]))
rest_same = all(np.array_equal(a[k].numpy(), b[k].numpy())
                for a, b in ((rest_default, default), (rest_bytes, bytes_out)) for k in a)
errors = {
    "empty_image": error_of(lambda: sig(images=tf.zeros([1, 0, 7, 3], tf.uint8))),
    "empty_batch": error_of(lambda: sig(images=tf.zeros([0, 8, 8, 3], tf.uint8))),
    "float_pixels": error_of(lambda: sig(images=tf.zeros([1, 8, 8, 3], tf.float32))),
    "four_channels": error_of(lambda: sig(images=tf.zeros([1, 8, 8, 4], tf.uint8))),
    "not_an_image": error_of(lambda: sig_bytes(image_bytes=tf.constant([b"not an image"]))),
    "second_not_an_image": error_of(
        lambda: sig_bytes(image_bytes=tf.constant([pngs[0], b"not an image"]))),
    "modules": sorted(m for m in sys.modules if m.split(".")[0] == "keras_maskrcnn"),
    "rest_same": rest_same,
    "rest_summary": example.summarize({"outputs": {k: v.numpy().tolist()
                                                   for k, v in default.items()}}, 0.0),
}
with open(out + ".json", "w") as f:
    json.dump(errors, f)
"""


_image = noise_rect_image


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return np.frombuffer(buffer.getvalue(), np.uint8)


def small_random_model():
    """The `shapes` preset, smaller, random weights (fixed seed)."""
    keras.utils.set_random_seed(0)
    config = get_config("shapes", detections_per_image=8, rpn_pre_nms_topk_test=200,
                        rpn_post_nms_topk_test=50, score_threshold=0.05)
    return build_model(config, roi_align_implementation="gather")  # as exported: no rebuild


def constant_png(height: int, width: int) -> bytes:
    """A valid black RGB PNG, written row by row (a few MB of memory for any size)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (3 * width + 1)  # filter byte 0, then the pixels
    idat = b"".join([compressor.compress(row) for _ in range(height)] + [compressor.flush()])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def _saved_model_cli():
    exe = shutil.which("saved_model_cli")
    if exe:
        return [exe]
    return [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_saved_model")
    model = small_random_model()
    # through the command line, from a model directory (rebuilt with the portable RoIAlign)
    save_model_dir(model, tmp / "model")
    path = tmp / "serving" / "1"
    assert cli_main(["export", "--model", str(tmp / "model"), "--format", "saved_model",
                     "--output", str(path), "--full-image-masks"]) == 0
    rng = np.random.default_rng(0)
    # landscape (96x128 bucket), portrait (128x96) and square (128x128)
    image_a, image_b, image_c = _image(rng, 90, 120), _image(rng, 110, 70), _image(rng, 100, 100)
    batch = np.stack([image_a, image_a[:, ::-1]])
    out = str(tmp / "outputs")
    np.savez(out + ".in.npz", batch=batch, square=image_c, png_a=_png(image_a),
             png_b=_png(image_b), png_c=_png(image_c))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    fresh = subprocess.Popen([sys.executable, "-c", FRESH_PROCESS, str(path), out,
                              str(EXAMPLES / "tf_serving_request.py")], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cli = subprocess.Popen([*_saved_model_cli(), "show", "--dir", str(path), "--all"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The Keras path with the per-image canvas: each image on its resized size rounded up to 32,
    # which for these three is one of the auto buckets.
    per_image = rebuilt(model, canvas="per_image")
    images = [batch[0], batch[1], image_b, image_c]
    reference = predict_images(per_image, images)
    fresh_log, cli_log = fresh.communicate(timeout=300)[0], cli.communicate(timeout=300)[0]
    assert fresh.returncode == 0, fresh_log[-3000:]
    assert cli.returncode == 0, cli_log[-3000:]
    with open(out + ".json") as f:
        errors = json.load(f)
    return {"model": model, "per_image": per_image, "path": path, "tmp": tmp,
            "outputs": dict(np.load(out + ".npz")), "errors": errors, "cli": cli_log,
            "reference": reference, "images": images,
            "shapes": [image.shape[:2] for image in images]}


def _match(ref_boxes, ref_labels, boxes, labels):
    """Index into (boxes, labels) of each reference detection: same label, nearest box."""
    order, free = [], set(range(len(boxes)))
    for box, label in zip(ref_boxes, ref_labels, strict=True):
        candidates = [j for j in free if labels[j] == label]
        assert candidates, f"no exported detection of class {label} left for {box}"
        j = min(candidates, key=lambda c: np.abs(boxes[c] - box).max())
        free.remove(j)
        order.append(j)
    return np.array(order, np.int64)


def _check_image(outputs, prefix, index, ref, shape):
    n = int(outputs[f"{prefix}_num_detections"][index])
    assert n == len(ref["scores"]) > 0
    boxes = outputs[f"{prefix}_detection_boxes"][index]
    labels = outputs[f"{prefix}_detection_classes"][index]
    order = _match(ref["boxes"], ref["labels"], boxes[:n], labels[:n])
    np.testing.assert_allclose(boxes[order], ref["boxes"], atol=BOX_ATOL, rtol=1e-5)
    np.testing.assert_array_equal(labels[order], ref["labels"])
    np.testing.assert_allclose(outputs[f"{prefix}_detection_scores"][index][order],
                               ref["scores"], atol=PROB_ATOL)
    # padding rows are zeros
    assert not boxes[n:].any() and not labels[n:].any()
    assert not outputs[f"{prefix}_detection_masks"][index][n:].any()
    np.testing.assert_array_equal(outputs[f"{prefix}_original_shape"][index], shape)
    full = outputs[f"{prefix}_detection_full_masks"][index]
    h, w = shape
    assert full.dtype == np.uint8 and not full[:, h:].any() and not full[:, :, w:].any()
    mismatch = np.mean(full[order, :h, :w] != ref["masks"])
    assert mismatch <= FULL_MASK_MISMATCH, mismatch
    return order


def test_serving_default_matches_keras(exported):
    outputs, refs = exported["outputs"], exported["reference"]
    assert outputs["default_detection_boxes"].shape == (2, 8, 4)
    assert outputs["default_detection_masks"].shape == (2, 8, 28, 28)
    assert outputs["default_detection_full_masks"].shape == (2, 8, 90, 120)
    assert outputs["default_detection_classes"].dtype == np.int32
    for index in range(2):
        _check_image(outputs, "default", index, refs[index], exported["shapes"][index])


def test_each_image_ran_on_its_own_bucket(exported):
    """The three test shapes land in the three auto buckets, each the per-image canvas."""
    config = exported["per_image"].config
    buckets = auto_buckets(config.min_size, config.max_size)
    assert buckets == [(96, 128), (128, 96), (128, 128)]
    chosen = [bucket_for(*shape, buckets, config.min_size, config.max_size)
              for shape in exported["shapes"][1:]]
    assert chosen == buckets
    assert chosen == [canvas_for(*shape, config) for shape in exported["shapes"][1:]]
    meta = json.loads((exported["path"] / "assets.extra" / EXPORT_METADATA_FILE).read_text())
    assert meta["buckets"] == [list(b) for b in buckets]
    assert meta["max_image_pixels"] == DEFAULT_MAX_IMAGE_PIXELS
    assert meta["precision"] == "float32"


def test_serving_default_square_bucket_matches_keras(exported):
    outputs, refs = exported["outputs"], exported["reference"]
    _check_image(outputs, "square", 0, refs[3], exported["shapes"][3])


def test_serving_default_masks_match_keras_28x28(exported):
    """The 28x28 probabilities equal the Keras graph's (run on the same letterboxed input)."""
    from keras_maskrcnn.data.pipeline import make_inference_inputs
    from keras_maskrcnn.inference import run_model

    model, outputs = exported["per_image"], exported["outputs"]
    canvas = canvas_for(*exported["shapes"][0], model.config)
    keras_out = run_model(model_for_canvas(model, canvas),
                          make_inference_inputs(exported["images"][:1], model.config, canvas))
    n = int(keras_out["num_detections"][0])
    ref = exported["reference"][0]
    order = _match(ref["boxes"], ref["labels"], outputs["default_detection_boxes"][0][:n],
                   outputs["default_detection_classes"][0][:n])
    np.testing.assert_allclose(outputs["default_detection_masks"][0][order],
                               keras_out["detection_masks"][0, :n], atol=PROB_ATOL)


def test_serving_bytes_matches_keras_with_mixed_sizes(exported):
    outputs, refs = exported["outputs"], exported["reference"]
    # three PNGs of different sizes (three buckets): full masks are padded to the largest
    # height and width
    assert outputs["bytes_detection_full_masks"].shape == (3, 8, 110, 120)
    for index, ref_index in ((0, 0), (1, 2), (2, 3)):
        _check_image(outputs, "bytes", index, refs[ref_index], exported["shapes"][ref_index])
    # the decoded first image is the same as the uint8 tensor of serving_default (to float32
    # rounding: the two signatures batch it with other images; one ulp at 80 px is 7.6e-6)
    for key in ("detection_boxes", "detection_scores", "detection_masks"):
        np.testing.assert_allclose(outputs[f"bytes_{key}"][0], outputs[f"default_{key}"][0],
                                   atol=2e-5)


def test_bad_requests_fail_with_clear_errors(exported):
    errors = exported["errors"]
    assert "InvalidArgumentError" in errors["empty_image"]
    assert "empty image: height and width must be > 0" in errors["empty_image"]
    assert "the batch is empty" in errors["empty_batch"]
    assert "uint8" in errors["float_pixels"]
    assert "no error" not in errors["four_channels"]
    assert "Unknown image file format" in errors["not_an_image"]
    assert "image_bytes[0]" in errors["not_an_image"]
    assert "image_bytes[1]: Unknown image file format" in errors["second_not_an_image"]
    assert errors["modules"] == []  # the fresh process never imported keras_maskrcnn


def test_rest_request_bodies_of_the_example(exported):
    """examples/tf_serving_request.py bodies, decoded as TF Serving does, give the same
    detections as direct calls; its summary lists every valid detection."""
    errors, outputs = exported["errors"], exported["outputs"]
    assert errors["rest_same"] is True
    assert len(errors["rest_summary"]) == int(outputs["default_num_detections"].sum())


def test_saved_model_cli_lists_both_signatures(exported):
    log = exported["cli"]
    for signature in ("serving_default", "serving_bytes"):
        assert f"signature_def['{signature}']" in log
    assert "DT_UINT8" in log and "DT_STRING" in log
    for output in ("detection_boxes", "detection_scores", "detection_classes", "num_detections",
                   "detection_masks", "detection_full_masks"):
        assert f"outputs['{output}']" in log


def test_exportable_model_is_used_as_is(exported):
    model = exported["model"]
    assert export_ready_model(model) is model
    assert json.loads((exported["path"] / "assets.extra" / "config.json").read_text()) \
        == json.loads(model.config.to_json())


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="model_or_dir"):
        export_saved_model(42, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="config.json"):
        export_saved_model(tmp_path / "missing", tmp_path / "x")
    with pytest.raises(TypeError, match="full_image_masks"):
        export_saved_model(tmp_path / "missing", tmp_path / "x", full_image_masks="yes")
    with pytest.raises(SystemExit, match="tflite only"):
        cli_main(["export", "--model", str(tmp_path), "--format", "saved_model", "--output",
                  str(tmp_path / "x"), "--quantize", "float16"])
    with pytest.raises(SystemExit, match="saved_model only"):
        cli_main(["export", "--model", str(tmp_path), "--format", "tflite", "--output",
                  str(tmp_path / "x.tflite"), "--full-image-masks"])
    for option in (["--precision", "bfloat16"], ["--max-image-pixels", "100"]):
        with pytest.raises(SystemExit, match="saved_model only"):
            cli_main(["export", "--model", str(tmp_path), "--format", "tflite", "--output",
                      str(tmp_path / "x.tflite"), *option])
    with pytest.raises(SystemExit, match="--buckets"):
        cli_main(["export", "--model", str(tmp_path), "--format", "saved_model", "--output",
                  str(tmp_path / "x"), "--buckets", "800x1000"])
    with pytest.raises(SystemExit, match="exclude each other"):
        cli_main(["export", "--model", str(tmp_path), "--format", "tflite", "--output",
                  str(tmp_path / "x.tflite"), "--buckets", "auto", "--input-size", "128"])
    with pytest.raises(ValueError, match="max_image_pixels"):
        export_saved_model(tmp_path / "missing", tmp_path / "x", max_image_pixels=0)
    with pytest.raises(SystemExit, match="not a model directory"):
        cli_main(["export", "--model", str(tmp_path / "missing"), "--format", "tflite",
                  "--output", str(tmp_path / "x.tflite")])


# Loads the SavedModel in a fresh process, runs one small request, then sends a batch whose
# second file is HUGE_SIDE x HUGE_SIDE: reports the error and the peak RSS before and after.
OVERSIZED_PROCESS = r"""
import json, resource, sys
import tensorflow as tf

path, small_path, huge_path, out = sys.argv[1:5]
sig = tf.saved_model.load(path).signatures["serving_bytes"]
small, huge = open(small_path, "rb").read(), open(huge_path, "rb").read()
sig(image_bytes=tf.constant([small]))  # everything but the big decode has run once
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    sig(image_bytes=tf.constant([small, huge]))
    error = "no error"
except Exception as err:  # noqa: BLE001
    error = f"{type(err).__name__}: {err}"
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open(out, "w") as f:
    json.dump({"error": error, "before_kib": before, "after_kib": after}, f)
"""


def test_oversized_file_is_refused_before_decoding(exported, tmp_path):
    """A 12000 x 12000 PNG (144 MP, 0.4 MB compressed) in a batch is refused with the limit and
    its index, from its header: the peak RSS of the serving process barely moves."""
    huge = constant_png(HUGE_SIDE, HUGE_SIDE)
    sizes, _ = encoded_image_sizes(np.array([huge]))
    assert sizes.numpy().tolist() == [[HUGE_SIDE, HUGE_SIDE]]
    (tmp_path / "huge.png").write_bytes(huge)
    (tmp_path / "small.png").write_bytes(_png(exported["images"][2]).tobytes())
    result = subprocess.run(
        [sys.executable, "-c", OVERSIZED_PROCESS, str(exported["path"]),
         str(tmp_path / "small.png"), str(tmp_path / "huge.png"), str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out.json").read_text())
    error = report["error"]
    assert error.startswith("InvalidArgumentError"), error
    assert "image_bytes[1] is 12000 x 12000 = 144000000 pixels" in error
    assert f"limit of {DEFAULT_MAX_IMAGE_PIXELS} pixels" in error
    growth_mib = (report["after_kib"] - report["before_kib"]) / 1024
    print(f"peak RSS {report['before_kib'] / 1024:.0f} MiB before, "
          f"{report['after_kib'] / 1024:.0f} MiB after the refused request")
    assert growth_mib < MAX_RSS_GROWTH_MIB, report


@pytest.fixture(scope="module")
def square_export(exported):
    """`--buckets square --max-image-pixels 10000` through the command line."""
    path = exported["tmp"] / "square" / "1"
    assert cli_main(["export", "--model", str(exported["tmp"] / "model"), "--format",
                     "saved_model", "--output", str(path), "--buckets", "square",
                     "--max-image-pixels", "10000"]) == 0
    import tensorflow as tf

    return path, tf.saved_model.load(str(path))


def test_square_bucket_is_the_fixed_canvas_export(exported, square_export):
    """One 128 x 128 canvas: the detections of the fixed-canvas Keras model (as before
    buckets)."""
    import tensorflow as tf

    path, loaded = square_export
    meta = json.loads((path / "assets.extra" / EXPORT_METADATA_FILE).read_text())
    assert meta["buckets"] == [[128, 128]] and meta["max_image_pixels"] == 10000
    image = exported["images"][0]  # 90 x 120 = 10800 pixels: above the limit
    small = image[:80, :100]
    out = {k: v.numpy() for k, v in
           loaded.signatures["serving_default"](images=tf.constant(small[None])).items()}
    ref = predict_images(exported["model"], [small])[0]
    n = int(out["num_detections"][0])
    assert n == len(ref["scores"]) > 0
    order = _match(ref["boxes"], ref["labels"], out["detection_boxes"][0][:n],
                   out["detection_classes"][0][:n])
    np.testing.assert_allclose(out["detection_boxes"][0][order], ref["boxes"], atol=BOX_ATOL)
    np.testing.assert_allclose(out["detection_scores"][0][order], ref["scores"],
                               atol=PROB_ATOL)


def test_max_image_pixels_option(exported, square_export):
    import tensorflow as tf

    _, loaded = square_export
    image = exported["images"][0]  # 90 x 120
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"each image is 90 x 120 = 10800 pixels .* limit of 10000 pixels"):
        loaded.signatures["serving_default"](images=tf.constant(image[None]))
    pngs = [_png(image[:80, :100]).tobytes(), _png(image).tobytes()]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image_bytes\[1\] is 90 x 120 = 10800 pixels .* limit of 10000"):
        loaded.signatures["serving_bytes"](image_bytes=tf.constant(pngs))
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant(pngs[:1]))
    assert out["original_shape"].numpy().tolist() == [[80, 100]]


def test_bucket_sets():
    assert auto_buckets(800, 1333) == [(800, 800), (800, 1088), (1088, 800), (800, 1216),
                                       (1216, 800), (800, 1344), (1344, 800)]
    assert square_bucket(800, 1333) == [(1344, 1344)]
    assert parse_buckets("square", 800, 1333) == [(1344, 1344)]
    assert parse_buckets(" 800x1088,1088X800 ,800x1088", 800, 1333) == [(800, 1088), (1088, 800)]
    assert parse_buckets([(96, 128)], 128, 128) == [(96, 128)]
    assert missing_coverage(parse_buckets("800x1088,1088x800", 800, 1333), 800, 1333) == [
        (800, 1344), (1344, 800)]
    assert missing_coverage(auto_buckets(800, 1333), 800, 1333) == []
    assert missing_coverage(square_bucket(800, 1333), 800, 1333) == []
    # the photo shapes of tests/data/coco-val2017-10 and a square crop
    for (h, w), canvas in (((480, 640), (800, 1088)), ((640, 480), (1088, 800)),
                           ((480, 480), (800, 800)), ((426, 640), (800, 1216)),
                           ((408, 640), (800, 1344)), ((1080, 1920), (800, 1344))):
        assert bucket_for(h, w, auto_buckets(800, 1333), 800, 1333) == canvas
    for bad in ("800x1000", "800", "wide", "0x64", ""):
        with pytest.raises(ValueError, match="bucket"):
            parse_buckets(bad, 800, 1333)


def test_an_image_that_fits_no_bucket_is_refused():
    import tensorflow as tf

    index = tf.function(lambda hw: bucket_index_tf(hw, [(96, 128), (128, 128)], "images"))
    assert int(index(tf.constant([90, 128]))) == 0
    assert int(index(tf.constant([128, 120]))) == 1
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"images: the resized image 130 x 20 .* fits none of the canvases "
                             r"of this export \(96x128, 128x128"):
        index(tf.constant([130, 20]))


def test_per_image_shape_polymorphic_export(exported, tmp_path):
    """`buckets="per_image"`: one shape-polymorphic graph; a 60 x 120 image runs on 64 x 128
    (no auto bucket has it) and gives `predict_images`' per-image detections exactly."""
    import tensorflow as tf

    per_image = exported["per_image"]
    path = export_saved_model(exported["model"], tmp_path / "per_image", buckets="per_image")
    meta = json.loads((path / "assets.extra" / EXPORT_METADATA_FILE).read_text())
    assert meta["buckets"] == "per_image"
    loaded = tf.saved_model.load(str(path))
    images = [exported["images"][0][:60], exported["images"][2]]
    assert canvas_for(*images[0].shape[:2], per_image.config) == (64, 128)
    refs = predict_images(per_image, images)
    outputs = {f"bytes_{k}": v.numpy() for k, v in loaded.signatures["serving_bytes"](
        image_bytes=tf.constant([_png(im).tobytes() for im in images])).items()}
    outputs.update({f"default_{k}": v.numpy() for k, v in loaded.signatures["serving_default"](
        images=tf.constant(images[0][None])).items()})
    for index, ref in enumerate(refs):
        n = int(outputs["bytes_num_detections"][index])
        assert n == len(ref["scores"]) > 0
        order = _match(ref["boxes"], ref["labels"], outputs["bytes_detection_boxes"][index][:n],
                       outputs["bytes_detection_classes"][index][:n])
        np.testing.assert_allclose(outputs["bytes_detection_boxes"][index][order], ref["boxes"],
                                   atol=BOX_ATOL)
        np.testing.assert_allclose(outputs["bytes_detection_scores"][index][order],
                                   ref["scores"], atol=PROB_ATOL)
    for key in ("detection_boxes", "detection_scores", "detection_masks"):
        np.testing.assert_allclose(outputs[f"default_{key}"][0], outputs[f"bytes_{key}"][0],
                                   atol=1e-5)
    with pytest.raises(ValueError, match="per_image"):
        parse_buckets("per_image", 128, 128)
