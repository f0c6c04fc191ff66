"""Small helpers shared by test modules (imported as `helpers`; tests/ is on sys.path)."""

import numpy as np


def noise_rect_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Rectangles on a noise background: a flat background gives equal features, hence exactly
    tied scores at many anchors, which kernels with other summation orders break differently."""
    image = rng.integers(0, 80, (height, width, 3)).astype(np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, height - 20), rng.integers(0, width - 20)
        image[y:y + rng.integers(10, 20), x:x + rng.integers(10, 20)] = rng.integers(80, 255, 3)
    return image
