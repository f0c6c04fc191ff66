"""The command line on real files: evaluate on the COCO photos, predict, errors."""

import json
import os

import numpy as np
import pytest

from keras_maskrcnn.builder import build_model
from keras_maskrcnn.cli import main
from keras_maskrcnn.config import get_config
from keras_maskrcnn.data import CocoDataset
from keras_maskrcnn.saving import save_model_dir


@pytest.fixture(scope="module")
def coco_model_dir(tmp_path_factory, coco10_dir):
    """An untrained tiny model with COCO's 80 classes, saved as a model directory."""
    source = CocoDataset(coco10_dir / "annotations.json", coco10_dir / "images")
    config = get_config("shapes", num_classes=source.num_classes,
                        class_names=tuple(source.class_names), image_size=(256, 256),
                        min_size=192, max_size=256, score_threshold=0.0)
    return save_model_dir(build_model(config), tmp_path_factory.mktemp("coco_model"))


def test_evaluate_coco_writes_metrics_json(coco_model_dir, coco10_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    rc = main(["evaluate", "--model", str(coco_model_dir), "--dataset", "coco",
               "--annotations", str(coco10_dir / "annotations.json"),
               "--images", str(coco10_dir / "images"), "--json", str(out), "--max-images", "3"])
    assert rc == 0
    metrics = json.loads(out.read_text())
    for iou_type in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75"} <= set(metrics[iou_type])
        assert 0.0 <= metrics[iou_type]["AP"] <= 1.0
    assert "Average Precision" in capsys.readouterr().out


def test_predict_writes_pngs_and_coco_records(coco_model_dir, coco10_dir, tmp_path):
    images = sorted((coco10_dir / "images").glob("*.jpg"))[:2]
    rc = main(["predict", "--model", str(coco_model_dir), *map(str, images),
               "--output", str(tmp_path), "--score-threshold", "0.0"])
    assert rc == 0
    for image in images:
        assert (tmp_path / f"{image.stem}.png").exists()
    records = json.loads((tmp_path / "predictions.json").read_text())
    assert records, "an untrained model with score threshold 0 still detects something"
    config = json.loads((coco_model_dir / "config.json").read_text())
    for record in records:
        assert record["file_name"] in {p.name for p in images}
        assert set(record) == {"file_name", "category_id", "bbox", "score", "segmentation"}
        assert 1 <= record["category_id"] <= config["num_classes"]
        x, y, w, h = record["bbox"]
        assert w >= 0 and h >= 0 and x >= 0 and y >= 0
        assert set(record["segmentation"]) == {"size", "counts"}
    sizes = {tuple(r["segmentation"]["size"]) for r in records}
    from PIL import Image

    assert sizes <= {Image.open(p).size[::-1] for p in images}


def test_missing_model_directory_is_a_clear_error(tmp_path, capsys):
    code = main(["predict", "--model", str(tmp_path), "x.jpg", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "model directory" in err and len(err.strip().splitlines()) == 1


def test_coco_dataset_needs_annotations(coco_model_dir):
    with pytest.raises(SystemExit, match="--annotations"):
        main(["evaluate", "--model", str(coco_model_dir), "--dataset", "coco"])


def test_model_predicts_nothing_outside_original_image(coco_model_dir, coco10_dir):
    from keras_maskrcnn.inference import predict_images
    from keras_maskrcnn.saving import load_model_dir

    source = CocoDataset(coco10_dir / "annotations.json", coco10_dir / "images")
    image = source.load_image(source.image_ids[0])
    det = predict_images(load_model_dir(coco_model_dir), [image])[0]
    h, w = image.shape[:2]
    assert np.all(det["boxes"] >= 0) and np.all(det["boxes"][:, [0, 2]] <= h)
    assert np.all(det["boxes"][:, [1, 3]] <= w)


def test_console_script_prints_one_line_and_no_tensorflow_chatter(tmp_path):
    import shutil
    import subprocess

    script = shutil.which("keras-maskrcnn")
    assert script, "keras-maskrcnn is not on PATH (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([script, "predict", "--model", str(tmp_path / "none"), "x.jpg",
                             "--output", str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if "error:" in line]
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("argv", [
    ["train", "--batch-size", "0"], ["train", "--batch-size", "-2"], ["train", "--epochs", "0"],
    ["train", "--max-steps", "-1"], ["train", "--steps-per-epoch", "0"],
    ["train", "--checkpoint-every", "0"], ["train", "--keep-checkpoints", "0"],
    ["train", "--eval-every", "0"], ["train", "--shapes-image-size", "8"],
    ["train", "--max-image-pixels", "-1"], ["evaluate", "--model", "m", "--batch-size", "0"],
    ["evaluate", "--model", "m", "--max-images", "0"],
    ["predict", "--model", "m", "x.jpg", "--output", "o", "--score-threshold", "1.5"],
    ["predict", "--model", "m", "x.jpg", "--output", "o", "--score-threshold", "high"],
])
def test_out_of_range_flags_are_one_line_errors(argv, capsys):
    from keras_maskrcnn.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {argv[-2]}" in err and ("must be" in err or "invalid" in err), err


def test_train_api_refuses_non_positive_counts(tmp_path):
    from keras_maskrcnn.config import get_config
    from keras_maskrcnn.data import ShapesDataset
    from keras_maskrcnn.training import TrainingError, train

    source = ShapesDataset(num_images=4, image_size=64, seed=0)
    for name in ("batch_size", "max_steps", "epochs", "keep_checkpoints"):
        with pytest.raises(TrainingError, match=f"{name} must be >= 1"):
            train(get_config("shapes"), source, tmp_path / name, **{name: 0})
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize("command", ["train", "predict"])
def test_output_that_is_a_file_is_a_one_line_error(command, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    argv = {"train": ["train", "--dataset", "shapes", "--max-steps", "1"],
            "predict": ["predict", "--model", str(tmp_path / "no_model"), "x.jpg"]}[command]
    assert main([*argv, "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("flag", ["--json", "--pr-curves"])
def test_evaluate_file_flag_that_is_a_folder_fails_first(flag, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "no_model"), flag, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {tmp_path} is a folder" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["images_is_a_file", "val_images_missing", "annotations_dir",
                                  "val_images_alone"])
def test_dataset_flags_name_the_wrong_one(case, coco10_dir, tmp_path, capsys):
    ann, images = str(coco10_dir / "annotations.json"), str(coco10_dir / "images")
    extra, expected = {
        "images_is_a_file": (["--annotations", ann, "--images", ann], "--images"),
        "val_images_missing": (["--annotations", ann, "--images", images, "--val-annotations",
                                ann, "--val-images", str(tmp_path / "nope")], "--val-images"),
        "annotations_dir": (["--annotations", str(coco10_dir), "--images", images],
                            "--annotations"),
        "val_images_alone": (["--annotations", ann, "--images", images, "--val-images", images],
                             "--val-annotations"),
    }[case]
    rc = main(["train", "--dataset", "coco", *extra, "--max-steps", "1",
               "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()
