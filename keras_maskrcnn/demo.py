"""The quick start's closing step: evaluate the trained shapes model and draw a few predictions."""

from __future__ import annotations

import json
from pathlib import Path

from keras_maskrcnn.model import MaskRCNN


def evaluate_and_draw(model: MaskRCNN, val, output: Path, draw: bool = True,
                      num_drawn: int = 4) -> dict:
    """COCO metrics of `model` on the source `val` -> `output/metrics.json` (printed); with
    `draw`, the first `num_drawn` validation images to `output/val_images/` and their drawn
    predictions to `output/predictions/`. Returns the metrics."""
    from keras_maskrcnn.evaluation import save_metrics_json
    from keras_maskrcnn.files import predict_files
    from keras_maskrcnn.inference import evaluate
    from keras_maskrcnn.visualize import save_image

    metrics = evaluate(model, val, verbose=False)
    save_metrics_json(metrics, output / "metrics.json")
    print(json.dumps({t: {k: round(m[k], 4) for k in ("AP", "AP50", "AP75")}
                      for t, m in metrics.items()}))
    if draw:
        sample_dir = output / "val_images"
        sample_dir.mkdir(exist_ok=True)
        paths = []
        for image_id in list(val.image_ids)[:num_drawn]:
            path = sample_dir / val.file_name(image_id)
            save_image(val.load_image(image_id), path)
            paths.append(path)
        predict_files(model, paths, output / "predictions", model.config.class_names)
        print(f"predictions drawn in {output / 'predictions'}")
    return metrics
