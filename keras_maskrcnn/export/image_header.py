"""Image sizes read from the headers of encoded images inside a TF graph, without decoding.

`encoded_image_sizes(image_bytes)` gives (height, width) of each JPEG (`tf.image.extract_jpeg_shape`,
which parses the markers only), PNG (IHDR), GIF (logical screen), BMP (info header) and WebP
(VP8 / VP8L / VP8X) file, the formats `tf.io.decode_image` reads besides JPEG XL, whose
variable-length header is not parsed here. `check_encoded_images` turns them into the
format and pixel-limit assertions of the `serving_bytes` signature, so that an oversized file is refused
before `decode_image` allocates its pixels.
"""

from __future__ import annotations

import tensorflow as tf

HEADER_BYTES = 32
FORMAT_UNKNOWN, FORMAT_JPEG, FORMAT_PNG, FORMAT_GIF, FORMAT_BMP, FORMAT_WEBP, FORMAT_JXL = range(7)
FORMAT_NAMES = ("unknown", "JPEG", "PNG", "GIF", "BMP", "WebP", "JPEG XL")
_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"


def _head(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The first HEADER_BYTES bytes of each string (zero-padded): ([B] string, [B, 32] int64)."""
    head = tf.strings.substr(image_bytes, 0, HEADER_BYTES)  # shorter strings stay shorter
    head = tf.strings.substr(tf.strings.join([head, tf.constant(b"\0" * HEADER_BYTES)]), 0,
                             HEADER_BYTES)
    return head, tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)


def image_formats(image_bytes: tf.Tensor) -> tf.Tensor:
    """[B] string -> [B] int32 format code (FORMAT_*) from the leading magic bytes."""
    head, _ = _head(image_bytes)

    def starts(magic: bytes, offset: int = 0):
        return tf.equal(tf.strings.substr(head, offset, len(magic)), magic)

    cases = [
        (starts(b"\xff\xd8\xff"), FORMAT_JPEG),
        (starts(b"\x89PNG\r\n\x1a\n"), FORMAT_PNG),
        (starts(b"GIF87a") | starts(b"GIF89a"), FORMAT_GIF),
        (starts(b"BM"), FORMAT_BMP),
        (starts(b"RIFF") & starts(b"WEBP", 8), FORMAT_WEBP),
        (starts(b"\xff\x0a") | starts(_JXL_CONTAINER), FORMAT_JXL),
    ]
    code = tf.fill(tf.shape(image_bytes), FORMAT_UNKNOWN)
    for condition, value in reversed(cases):
        code = tf.where(condition, value, code)
    return code


def encoded_image_sizes(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Sizes from the headers: `image_bytes [B]` string -> (`sizes [B, 2]` int64 (height,
    width), `formats [B]` int32 FORMAT_*). Sizes are -1 where the header is not read (unknown
    formats, JPEG XL, unknown WebP chunks); a malformed JPEG fails in `extract_jpeg_shape`."""
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    head, b = _head(image_bytes)
    formats = image_formats(image_bytes)

    def u16le(o):
        return b[:, o] + b[:, o + 1] * 2**8

    def u24le(o):
        return u16le(o) + b[:, o + 2] * 2**16

    def u32le(o):
        return u24le(o) + b[:, o + 3] * 2**24

    def u32be(o):
        return b[:, o] * 2**24 + b[:, o + 1] * 2**16 + b[:, o + 2] * 2**8 + b[:, o + 3]

    def s32le_abs(o):  # BMP heights are negative for top-down rows
        value = u32le(o)
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    unknown = tf.fill(tf.shape(formats, out_type=tf.int64), tf.constant(-1, tf.int64))
    # PNG: IHDR is the first chunk, width then height, big-endian at 16 and 20.
    png = (u32be(20), u32be(16))
    # GIF: logical screen width and height, little-endian at 6 and 8.
    gif = (u16le(8), u16le(6))
    # BMP: BITMAPCOREHEADER (size 12) has 16-bit sizes at 18, 20; the others 32-bit at 18, 22.
    core = tf.equal(u32le(14), 12)
    bmp = (tf.where(core, u16le(20), s32le_abs(22)), tf.where(core, u16le(18), s32le_abs(18)))
    # WebP: the first chunk after "RIFF....WEBP" is VP8 (lossy), VP8L (lossless) or VP8X.
    chunk = tf.strings.substr(head, 12, 4)
    vp8l = u32le(21)
    webp_h = tf.where(tf.equal(chunk, b"VP8 "), u16le(28) % 2**14, unknown)
    webp_w = tf.where(tf.equal(chunk, b"VP8 "), u16le(26) % 2**14, unknown)
    webp_h = tf.where(tf.equal(chunk, b"VP8L"), vp8l // 2**14 % 2**14 + 1, webp_h)
    webp_w = tf.where(tf.equal(chunk, b"VP8L"), vp8l % 2**14 + 1, webp_w)
    webp_h = tf.where(tf.equal(chunk, b"VP8X"), u24le(27) + 1, webp_h)
    webp_w = tf.where(tf.equal(chunk, b"VP8X"), u24le(24) + 1, webp_w)

    def jpeg_size(args):
        data, is_jpeg = args
        return tf.cond(is_jpeg,
                       lambda: tf.cast(tf.image.extract_jpeg_shape(data)[:2], tf.int64),
                       lambda: tf.constant([-1, -1], tf.int64))

    jpeg = tf.map_fn(jpeg_size, (image_bytes, tf.equal(formats, FORMAT_JPEG)),
                     fn_output_signature=tf.TensorSpec([2], tf.int64))
    height, width = unknown, unknown
    for code, (h, w) in ((FORMAT_PNG, png), (FORMAT_GIF, gif), (FORMAT_BMP, bmp),
                         (FORMAT_WEBP, (webp_h, webp_w)), (FORMAT_JPEG, (jpeg[:, 0], jpeg[:, 1]))):
        height = tf.where(tf.equal(formats, code), h, height)
        width = tf.where(tf.equal(formats, code), w, width)
    return tf.stack([height, width], axis=1), formats


def check_encoded_images(image_bytes: tf.Tensor, max_pixels: int | None,
                         signature: str) -> list[tf.Operation]:
    """Assertions on a batch of encoded images, from their headers only (nothing is decoded):
    every file is of a format `tf.io.decode_image` reads, has at most `max_pixels` pixels (None:
    no limit), and is no JPEG XL file while a limit is set (its size is not read here). Each
    message names the first offending index (`image_bytes[i]`); the pixel message also its size
    and the limit."""
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    sizes, formats = encoded_image_sizes(image_bytes)

    def first(condition):
        return tf.argmax(tf.cast(condition, tf.int32), output_type=tf.int32)

    unknown = tf.equal(formats, FORMAT_UNKNOWN)
    message = tf.strings.format(
        signature + ": image_bytes[{}]: Unknown image file format (not JPEG, PNG, GIF, BMP, "
        "WebP or JPEG XL)", (first(unknown),))
    checks = [tf.debugging.Assert(tf.logical_not(tf.reduce_any(unknown)), [message])]
    if max_pixels is None:
        return checks
    pixels = tf.where(tf.reduce_all(sizes >= 0, axis=1), sizes[:, 0] * sizes[:, 1], 0)
    over = pixels > max_pixels
    k = first(over)
    message = tf.strings.format(
        signature + ": image_bytes[{}] is {} x {} = {} pixels (height x width), above the "
        f"limit of {max_pixels} pixels of this export; downscale it, or export with a larger "
        "`max_image_pixels`", (k, sizes[k, 0], sizes[k, 1], pixels[k]))
    checks.append(tf.debugging.Assert(tf.logical_not(tf.reduce_any(over)), [message]))
    jxl = tf.equal(formats, FORMAT_JXL)
    message = tf.strings.format(
        signature + ": image_bytes[{}] is a JPEG XL file, whose size cannot be checked against "
        f"the limit of {max_pixels} pixels (max_image_pixels) before decoding; send JPEG, PNG, "
        "GIF, BMP or WebP", (first(jxl),))
    checks.append(tf.debugging.Assert(tf.logical_not(tf.reduce_any(jxl)), [message]))
    return checks
