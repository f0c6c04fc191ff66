"""Repeat-factor sampling: factors against hand-computed values, the seeded epoch draws, and
the training stream (deterministic, resumable, epoch length)."""

import math

import numpy as np
import pytest

from keras_maskrcnn.config import get_config
from keras_maskrcnn.data.repeat_factor import (
    category_repeat_factors,
    epoch_order,
    epoch_repeats,
    expected_epoch_length,
    image_repeat_factors,
    source_image_labels,
    source_repeat_factors,
)

# Ten images: class 1 in eight of them (f = 0.8), classes 2 and 3 in one each (f = 0.1), one
# image without instances.
LABELS = [[1], [1, 1], [1], [1], [1], [1], [1], [1, 2], [3], []]
IDS = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]


def test_category_factors_by_hand():
    # T = 0.4: r_1 = max(1, sqrt(0.4 / 0.8)) = 1, r_2 = r_3 = sqrt(0.4 / 0.1) = 2.
    assert category_repeat_factors(LABELS, 0.4) == pytest.approx({1: 1.0, 2: 2.0, 3: 2.0})
    # T = 0.9: r_1 = sqrt(0.9 / 0.8) = 1.0607 (above 1 too), r_2 = r_3 = sqrt(9) = 3.
    assert category_repeat_factors(LABELS, 0.9) == pytest.approx(
        {1: math.sqrt(1.125), 2: 3.0, 3: 3.0})


def test_image_factor_is_the_max_over_its_classes():
    factors = image_repeat_factors(LABELS, 0.4)
    np.testing.assert_allclose(factors, [1, 1, 1, 1, 1, 1, 1, 2, 2, 1])
    assert expected_epoch_length(factors) == pytest.approx(12.0)
    # T = 0.225: r_2 = r_3 = sqrt(2.25) = 1.5; the image without instances keeps 1.
    np.testing.assert_allclose(image_repeat_factors(LABELS, 0.225),
                               [1, 1, 1, 1, 1, 1, 1, 1.5, 1.5, 1])


def test_threshold_must_be_positive():
    for bad in (0, -0.1, float("nan"), "0.1"):
        with pytest.raises(ValueError, match="repeat_factor_threshold"):
            category_repeat_factors(LABELS, bad)


def test_integer_factors_give_exact_copies():
    factors = image_repeat_factors(LABELS, 0.4)
    order = epoch_order(IDS, factors, seed=3, epoch=0)
    assert len(order) == 12
    counts = {i: int((order == i).sum()) for i in IDS}
    assert counts == {10: 1, 11: 1, 12: 1, 13: 1, 14: 1, 15: 1, 16: 1, 17: 2, 18: 2, 19: 1}


def test_fractional_factors_are_drawn_with_their_probability():
    factors = image_repeat_factors(LABELS, 0.225)
    repeats = np.stack([epoch_repeats(factors, seed=0, epoch=e) for e in range(4000)])
    assert set(np.unique(repeats[:, 7])) == {1, 2} and set(np.unique(repeats[:, 0])) == {1}
    # Each extra copy has probability frac(r) = 0.5: mean 1.5 (standard error 0.008).
    np.testing.assert_allclose(repeats[:, 7:9].mean(axis=0), [1.5, 1.5], atol=0.04)
    # An epoch is sum of the repeats long; on average sum_i r_i = 11.
    lengths = [len(epoch_order(IDS, factors, seed=0, epoch=e)) for e in range(4000)]
    assert lengths == list(repeats.sum(axis=1))
    assert np.mean(lengths) == pytest.approx(expected_epoch_length(factors), abs=0.06)


def test_order_is_a_pure_function_of_seed_and_epoch():
    factors = image_repeat_factors(LABELS, 0.225)
    a = [epoch_order(IDS, factors, seed=7, epoch=e) for e in range(6)]
    b = [epoch_order(IDS, factors, seed=7, epoch=e) for e in range(6)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert len({tuple(x) for x in a}) == 6  # epochs differ
    other = [epoch_order(IDS, factors, seed=8, epoch=e) for e in range(6)]
    assert any(not np.array_equal(x, y) for x, y in zip(a, other, strict=True))
    # Unshuffled: the copies in id order.
    plain = epoch_order(IDS, image_repeat_factors(LABELS, 0.4), seed=7, epoch=0, shuffle=False)
    np.testing.assert_array_equal(plain, [10, 11, 12, 13, 14, 15, 16, 17, 17, 18, 18, 19])


class LabelSource:
    """A tiny dataset source: 32 x 32 images, one full-image instance per label."""

    def __init__(self, labels, ids=IDS, crowd=None):
        self.image_ids = list(ids)
        self._labels = dict(zip(self.image_ids, labels, strict=True))
        self._crowd = crowd or {}

    def load_image(self, image_id):
        return np.full((32, 32, 3), image_id % 256, np.uint8)

    def load_annotations(self, image_id):
        labels = np.array(self._labels[image_id], np.int32)
        masks = np.zeros((len(labels), 32, 32), np.uint8)
        masks[:, 4:20, 4:20] = 1
        return {"boxes": np.tile(np.array([[4, 4, 20, 20]], np.float32), (len(labels), 1)),
                "labels": labels, "masks": masks,
                "is_crowd": np.array(self._crowd.get(image_id, [False] * len(labels)), bool)}


def test_source_labels_leave_out_crowd():
    source = LabelSource(LABELS, crowd={17: [False, True]})
    labels = source_image_labels(source)
    assert labels[7] == [1] and labels[8] == [3]
    np.testing.assert_allclose(source_repeat_factors(source, 0.4),
                               [1, 1, 1, 1, 1, 1, 1, 1, 2, 1])


def test_coco_image_labels_match_load_annotations(coco10_dir):
    from keras_maskrcnn.data import CocoDataset

    ds = CocoDataset(coco10_dir / "annotations.json", coco10_dir / "images")
    for image_id in ds.image_ids:
        ann = ds.load_annotations(image_id)
        assert sorted(ds.image_labels(image_id)) == sorted(ann["labels"][~ann["is_crowd"]])


# ------------------------------------------------------------------------------ the pipeline
def _config(threshold):
    return get_config("shapes", image_size=(64, 64), min_size=32, max_size=64,
                      train_min_sizes=(), horizontal_flip=False, max_instances=4,
                      gt_mask_size=8, batch_size=2, repeat_factor_threshold=threshold)


def _stream_ids(source, config, batches, seed=5, skip=0):
    from keras_maskrcnn.data import make_dataset

    data = make_dataset(source, config, training=True, seed=seed, skip_batches=skip)
    return [int(i) for (inputs,) in data.take(batches) for i in inputs["image_id"].numpy()]


def test_pipeline_stream_is_the_epoch_orders_and_resumes():
    source = LabelSource(LABELS)
    config = _config(0.225)
    factors = source_repeat_factors(source, 0.225)
    expected = np.concatenate([epoch_order(IDS, factors, 5, e) for e in range(4)])
    stream = _stream_ids(source, config, 15)
    np.testing.assert_array_equal(stream, expected[:30])  # epochs follow one another
    assert _stream_ids(source, config, 15) == stream  # same seed, same stream
    # Resuming at step 7 (mid-epoch): the same remaining order.
    assert _stream_ids(source, config, 8, skip=7) == stream[14:]
    assert _stream_ids(source, config, 15, seed=6) != stream


def test_epoch_length_in_steps():
    from keras_maskrcnn.data import num_batches

    source = LabelSource(LABELS)
    assert num_batches(source, 2) == 5
    assert num_batches(source, 2, 0.4) == 6  # sum r = 12 images
    assert num_batches(source, 2, 0.225) == 5  # sum r = 11 images -> 5 full batches
    assert num_batches(source, 4, 0.9) == 3  # 7 * 1.0607 + 3 + 3 + 1 = 14.42 -> 14 // 4


def test_config_field_and_off_by_default():
    assert get_config("shapes").repeat_factor_threshold == 0.0
    with pytest.raises(ValueError, match="repeat_factor_threshold"):
        get_config("shapes", repeat_factor_threshold=-1.0)
    # Off: the pipeline's shuffled passes hold every image once per pass.
    stream = _stream_ids(LabelSource(LABELS), _config(0.0), 5)
    assert sorted(stream) == IDS


def test_cli_flag_reaches_the_config(monkeypatch, tmp_path):
    import types

    from keras_maskrcnn import cli, training

    seen = {}

    def fake_train(config, source, output, **kwargs):
        seen["config"] = config
        return types.SimpleNamespace(step=1, total_steps=1, model=None)

    monkeypatch.setenv("KERAS_MASKRCNN_DISABLE_CUSTOM_OP", "1")
    monkeypatch.setattr(training, "train", fake_train)
    argv = ["train", "--shapes-train-images", "4", "--shapes-image-size", "64", "--epochs", "1",
            "--output", str(tmp_path / "run")]
    assert cli.main(argv + ["--repeat-factor-threshold", "0.01"]) == 0
    assert seen["config"].repeat_factor_threshold == 0.01
    assert cli.main(argv) == 0
    assert seen["config"].repeat_factor_threshold == 0.0
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(argv + ["--repeat-factor-threshold", "-1"])
