"""ShapesDataset: deterministic synthetic instances with visible-region masks."""

import numpy as np
import pytest

from keras_maskrcnn.data.shapes import ShapesDataset

# pycocotools (numpy 2) warns about its RLE objects' __array__; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def ds():
    return ShapesDataset(24, image_size=128, seed=0)


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]


def test_protocol_attributes(ds):
    assert ds.class_names == ["background", "square", "circle", "triangle"]
    assert ds.num_classes == 3
    assert ds.label_to_category_id == {1: 1, 2: 2, 3: 3}
    assert ds.category_id_to_label == {1: 1, 2: 2, 3: 3}
    assert ds.image_ids == list(range(24))
    assert ds.file_name(7) == "shape_00007.png"
    assert ds.image_info(3) == {"id": 3, "height": 128, "width": 128,
                                "file_name": "shape_00003.png"}


def test_deterministic_by_seed_and_seeds_differ(ds):
    again = ShapesDataset(24, image_size=128, seed=0)
    other = ShapesDataset(24, image_size=128, seed=1)
    for i in (0, 5, 23):
        np.testing.assert_array_equal(ds.load_image(i), again.load_image(i))
        a, b = ds.load_annotations(i), again.load_annotations(i)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    differ = [not np.array_equal(ds.load_image(i), other.load_image(i)) for i in range(5)]
    assert all(differ)
    assert not np.array_equal(ds.load_image(0), ds.load_image(1))


def test_annotations_are_consistent(ds):
    counts = []
    for i in ds.image_ids:
        image, ann = ds.load_image(i), ds.load_annotations(i)
        masks = ann["masks"]
        counts.append(len(masks))
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert masks.shape[1:] == (128, 128) and masks.dtype == np.uint8
        assert ann["boxes"].dtype == np.float32 and ann["labels"].dtype == np.int32
        assert set(np.unique(masks).tolist()) <= {0, 1}
        assert ((ann["labels"] >= 1) & (ann["labels"] <= 3)).all()
        assert not ann["is_crowd"].any()
        assert masks.sum(axis=0).max() <= 1  # visible regions are disjoint
        background = ~masks.any(axis=0)
        for k, mask in enumerate(masks):
            np.testing.assert_array_equal(ann["boxes"][k], _tight_box(mask))
            pixels = image[mask.astype(bool)]
            assert (pixels == pixels[0]).all()  # solid colour
            bg = image[background][0]
            assert np.linalg.norm(pixels[0].astype(float) - bg) > 60  # contrasts
            side = (ann["boxes"][k, 2:] - ann["boxes"][k, :2]).max()
            assert 0.3 * 0.12 * 128 <= side <= 0.35 * 128 + 2
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1


def test_every_class_appears(ds):
    labels = np.concatenate([ds.load_annotations(i)["labels"] for i in ds.image_ids])
    assert set(labels.tolist()) == {1, 2, 3}


def test_coco_object_matches_annotations(ds):
    coco = ds.coco
    assert coco is ds.coco  # built once
    assert sorted(coco.getImgIds()) == ds.image_ids
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ds.class_names[1:]
    for i in (0, 9, 17):
        ann = ds.load_annotations(i)
        records = coco.loadAnns(coco.getAnnIds(imgIds=[i]))
        assert len(records) == len(ann["labels"])
        for k, rec in enumerate(records):
            assert isinstance(rec["segmentation"]["counts"], str)
            assert rec["iscrowd"] == 0
            assert rec["category_id"] == ds.label_to_category_id[int(ann["labels"][k])]
            np.testing.assert_array_equal(coco.annToMask(rec), ann["masks"][k])
            y1, x1, y2, x2 = ann["boxes"][k]
            np.testing.assert_allclose(rec["bbox"], [x1, y1, x2 - x1, y2 - y1])
            assert rec["area"] == ann["masks"][k].sum()
    ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(set(ids)) == len(ids)


def test_rectangular_size_and_empty_images():
    ds = ShapesDataset(12, image_size=(96, 160), seed=3, min_shapes=0, max_shapes=2)
    counts = [len(ds.load_annotations(i)["labels"]) for i in ds.image_ids]
    assert ds.load_image(0).shape == (96, 160, 3)
    assert min(counts) == 0 and max(counts) <= 2
    empty = ds.load_annotations(counts.index(0))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 96, 160)


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_shapes"):
        ShapesDataset(4, min_shapes=3, max_shapes=2)
    with pytest.raises(TypeError, match="image_size"):
        ShapesDataset(4, image_size="big")
    with pytest.raises(ValueError, match="seed"):
        ShapesDataset(4, seed=-1)
    with pytest.raises(ValueError, match="image_id"):
        ShapesDataset(4).load_image(4)


def test_occlusion_rule_keeps_30_percent_visible(monkeypatch):
    from keras_maskrcnn.data import shapes

    calls = []

    def recording(full):
        visible = original(full)
        calls.append((full, visible))
        return visible

    original = shapes._visible_masks
    monkeypatch.setattr(shapes, "_visible_masks", recording)
    ds = ShapesDataset(20, image_size=64, seed=5, max_shapes=6)
    occluded = 0
    for i in ds.image_ids:
        calls.clear()
        masks = ds.load_annotations(i)["masks"]
        full, visible = calls[-1]  # the accepted layout
        np.testing.assert_array_equal(np.stack(visible).astype(np.uint8), masks)
        for f, v in zip(full, visible, strict=True):
            assert v.sum() >= 0.3 * f.sum() and not (v & ~f).any()
            occluded += int(v.sum() < f.sum())
    assert occluded > 0  # occlusion does happen
