"""TF Serving REST requests for a keras-maskrcnn SavedModel (numpy, Pillow and the standard
library only).

Export and serve (TF Serving loads `<model_base_path>/<version>/`):

    keras-maskrcnn export --model runs/shapes --format saved_model --output serving/maskrcnn/1
    docker run -p 8501:8501 -v "$PWD/serving/maskrcnn:/models/maskrcnn" \\
        -e MODEL_NAME=maskrcnn tensorflow/serving

Request bodies for POST http://localhost:8501/v1/models/maskrcnn:predict :

- `serving_default`, uint8 pixels, columnar ("inputs"); every image of one request must have
  the same height and width:
      {"signature_name": "serving_default",
       "inputs": {"images": [[[[r, g, b], ...], ...]]}}          # [B, H, W, 3] uint8
- `serving_bytes`, encoded JPEG / PNG files, row format ("instances"); sizes may differ;
  TF Serving decodes {"b64": ...} into the raw bytes of a DT_STRING input:
      {"signature_name": "serving_bytes",
       "instances": [{"image_bytes": {"b64": "<base64 of photo1.jpg>"}},
                     {"image_bytes": {"b64": "<base64 of photo2.png>"}}]}

The response holds, per image, `detection_boxes` (y1, x1, y2, x2 in original pixels),
`detection_scores`, `detection_classes` (1..K), `num_detections`, `detection_masks` (28 x 28
probabilities in the box), `original_shape` and, for a model exported with
`--full-image-masks`, `detection_full_masks`; rows past `num_detections` are padding. Columnar
requests answer {"outputs": {name: batch}}, row requests {"predictions": [{name: value}, ...]}.

    python examples/tf_serving_request.py photo1.jpg photo2.png --signature serving_bytes \\
        --url http://localhost:8501/v1/models/maskrcnn:predict
    python examples/tf_serving_request.py photo.jpg --write-body body.json   # no server needed
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image


def default_request(images: list[np.ndarray]) -> dict:
    """Body for `serving_default`: RGB uint8 images [h, w, 3], all of one size (columnar)."""
    if len({image.shape for image in images}) != 1:
        raise ValueError("serving_default takes images of one size per request; "
                         "use serving_bytes for mixed sizes")
    batch = np.stack([np.asarray(image, np.uint8) for image in images])
    return {"signature_name": "serving_default", "inputs": {"images": batch.tolist()}}


def bytes_request(encoded: list[bytes]) -> dict:
    """Body for `serving_bytes`: encoded image files, any sizes (row format, base64)."""
    return {"signature_name": "serving_bytes",
            "instances": [{"image_bytes": {"b64": base64.b64encode(data).decode("ascii")}}
                          for data in encoded]}


def post(url: str, body: dict, timeout: float = 60.0) -> dict:
    """POSTs a JSON body to a TF Serving REST endpoint and returns the decoded answer."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read())


def summarize(answer: dict, score_threshold: float = 0.5) -> list[str]:
    """One line per detection above `score_threshold`, for either response format."""
    rows = answer.get("predictions")
    if rows is None:  # columnar answer: {"outputs": {name: [B, ...]}}
        outputs = answer["outputs"]
        rows = [{k: v[i] for k, v in outputs.items()}
                for i in range(len(outputs["num_detections"]))]
    lines = []
    for index, row in enumerate(rows):
        for d in range(int(row["num_detections"])):
            score = row["detection_scores"][d]
            if score >= score_threshold:
                box = ", ".join(f"{v:.1f}" for v in row["detection_boxes"][d])
                lines.append(f"image {index}: class {row['detection_classes'][d]} "
                             f"score {score:.3f} box (y1, x1, y2, x2) = ({box})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TF Serving REST request for keras-maskrcnn")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--signature", choices=("serving_default", "serving_bytes"),
                        default="serving_bytes")
    parser.add_argument("--url", help="e.g. http://localhost:8501/v1/models/maskrcnn:predict")
    parser.add_argument("--write-body", help="write the JSON request body to this file")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    args = parser.parse_args(argv)

    if args.signature == "serving_default":
        body = default_request([np.asarray(Image.open(p).convert("RGB")) for p in args.images])
    else:
        body = bytes_request([Path(p).read_bytes() for p in args.images])
    if args.write_body:
        Path(args.write_body).write_text(json.dumps(body))
        print(f"request body for {args.signature} written to {args.write_body}")
    if args.url:
        for line in summarize(post(args.url, body), args.score_threshold):
            print(line)
    elif not args.write_body:
        parser.error("give --url (send the request) or --write-body (save it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
