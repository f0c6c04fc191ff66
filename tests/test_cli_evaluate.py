"""`keras-maskrcnn evaluate`: per-class table, per-class JSON, PR-curve PNG (shapes model)."""

import contextlib
import io
import json
import math

import pytest
from PIL import Image

from keras_maskrcnn.builder import build_model
from keras_maskrcnn.cli import SHAPES_VAL_SEED, build_parser, main
from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import ShapesDataset
from keras_maskrcnn.evaluation import METRIC_NAMES, PER_CLASS_METRICS
from keras_maskrcnn.saving import save_model_dir

# pycocotools' mask decode trips a numpy 2 deprecation warning that is not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

NUM_VAL_IMAGES = 4
CLASS_NAMES = ("square", "circle", "triangle")


@pytest.fixture(scope="module")
def shapes_model_dir(tmp_path_factory):
    """The untrained tiny shapes model; score threshold 0 so that it detects something."""
    config = get_config("shapes", score_threshold=0.0)
    return save_model_dir(build_model(config), tmp_path_factory.mktemp("shapes_model"))


def _reject_constant(name):
    raise ValueError(f"not strict JSON: {name}")


@pytest.fixture(scope="module")
def evaluate_run(shapes_model_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("evaluate")
    json_path, png_path = out_dir / "metrics.json", out_dir / "curves" / "pr.png"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        rc = main(["evaluate", "--model", str(shapes_model_dir), "--dataset", "shapes",
                   "--shapes-val-images", str(NUM_VAL_IMAGES), "--json", str(json_path),
                   "--pr-curves", str(png_path)])
    return rc, stdout.getvalue(), json_path, png_path


def test_evaluate_prints_summary_per_class_table_and_no_pycocotools_chatter(evaluate_run):
    rc, out, _, png_path = evaluate_run
    assert rc == 0
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in out  # pycocotools' summary table
    assert "Per-class AP" in out and "APs" in out
    table_rows = {line.split("|")[0].strip() for line in out.splitlines() if "|" in line}
    assert set(CLASS_NAMES) | {"all", "bbox", "segm"} <= table_rows
    for chatter in ("Loading and preparing results", "creating index", "index created",
                    "DONE (t="):
        assert chatter not in out
    assert str(png_path) in out
    last = json.loads(out.strip().splitlines()[-1])  # the compact summary stays the last line
    assert set(last) == {"bbox", "segm"} and set(last["bbox"]) == {"AP", "AP50", "AP75"}


def test_evaluate_json_has_todays_keys_and_per_class(evaluate_run):
    _, _, json_path, _ = evaluate_run
    metrics = json.loads(json_path.read_text(), parse_constant=_reject_constant)
    assert set(metrics) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) == {*METRIC_NAMES, "per_class"}
        per_class = metrics[iou_type]["per_class"]
        assert list(per_class) == list(CLASS_NAMES)
        for row in per_class.values():
            assert set(row) == set(PER_CLASS_METRICS)
            assert all(v is None or 0.0 <= v <= 1.0 for v in row.values())


def test_evaluate_json_matches_the_python_api(evaluate_run, shapes_model_dir):
    """The CLI's numbers are those of `inference.evaluate` on the same validation images."""
    from keras_maskrcnn.inference import evaluate
    from keras_maskrcnn.saving import load_model_dir

    _, _, json_path, _ = evaluate_run
    source = ShapesDataset(num_images=NUM_VAL_IMAGES, image_size=128, seed=SHAPES_VAL_SEED)
    expected = evaluate(load_model_dir(shapes_model_dir), source, verbose=False)
    metrics = json.loads(json_path.read_text())
    for iou_type in ("bbox", "segm"):
        for name in METRIC_NAMES:
            assert metrics[iou_type][name] == pytest.approx(expected[iou_type][name], abs=1e-9)
        for name, row in expected[iou_type]["per_class"].items():
            for metric, value in row.items():
                got = metrics[iou_type]["per_class"][name][metric]
                if math.isnan(value):
                    assert got is None
                else:
                    assert got == pytest.approx(value, abs=1e-9)


def test_evaluate_draws_pr_curves(evaluate_run):
    _, _, _, png_path = evaluate_run
    image = Image.open(png_path)
    assert image.format == "PNG"
    assert image.width > image.height  # two panels side by side (bbox, segm)


def test_pr_curves_are_optional():
    args = build_parser().parse_args(["evaluate", "--model", "m"])
    assert args.pr_curves is None and args.json is None


def test_max_image_pixels_flag_reaches_the_coco_reader(shapes_model_dir, coco10_dir, capsys,
                                                        caplog):
    """train and evaluate take --max-image-pixels (0: no limit) for their COCO images."""
    from keras_maskrcnn.cli import pixel_limit

    for command in ("train", "evaluate", "predict"):
        extra = ["--model", "m"] if command != "train" else []
        extra += ["x.jpg", "--output", "o"] if command == "predict" else []
        args = build_parser().parse_args([command, *extra, "--max-image-pixels", "0"])
        assert pixel_limit(args) is None, command
    rc = main(["evaluate", "--model", str(shapes_model_dir), "--dataset", "coco",
               "--annotations", str(coco10_dir / "annotations.json"),
               "--images", str(coco10_dir / "images"), "--max-image-pixels", "1000"])
    err = capsys.readouterr().err + caplog.text  # the skipped files are logged warnings
    assert rc != 0 and "above the limit of 1000" in err and "--max-image-pixels" in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--model", "m", "--max-image-pixels", "-1"])


def test_class_mismatch_is_named(coco10_dir):
    """A model evaluated on a dataset of other classes gets a warning, its own data none."""
    from keras_maskrcnn.data import CocoDataset
    from keras_maskrcnn.inference import category_map, class_mismatch

    shapes = get_config("shapes")
    same = ShapesDataset(num_images=2, image_size=64, seed=SHAPES_VAL_SEED)
    assert class_mismatch(shapes, same, category_map(shapes, same)) is None
    coco = CocoDataset(coco10_dir / "annotations.json", coco10_dir / "images")
    message = class_mismatch(shapes, coco, category_map(shapes, coco))
    assert message and "'square' vs 'person'" in message
    trained_on_coco = get_config("shapes", num_classes=coco.num_classes,
                                 class_names=tuple(coco.class_names))
    assert class_mismatch(trained_on_coco, coco, category_map(trained_on_coco, coco)) is None
    elsewhere = get_config("shapes", category_ids=(1001, 1002, 1003))
    message = class_mismatch(elsewhere, coco, category_map(elsewhere, coco))
    assert message and "none of the model's 3 classes" in message
