"""Keeps TensorFlow's C++ start-up chatter off a user's terminal (the `keras-maskrcnn` command).

TensorFlow 2.21 logs through absl straight to file descriptor 2, before and regardless of
`TF_CPP_MIN_LOG_LEVEL` ("oneDNN custom operations are on", "Could not find cuda drivers",
"failed call to cuInit", ...). `filter_native_stderr()` routes fd 2 through a pipe and drops the
lines in absl's format (`I0000 00:00:...`, `E0000 ...`) and absl's pre-init notice; everything
else reaches the terminal unchanged. Imports nothing heavy: it must run before TensorFlow.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

ABSL_LINE = re.compile(rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s|WARNING: All log messages before "
                       rb"absl::InitializeLog|To enable the following instructions:|"
                       rb"This TensorFlow binary is optimized|E0000 |I0000 |W0000 )")


def filter_native_stderr() -> None:
    """Installs the filter once per process (no-op where fd 2 cannot be duplicated)."""
    if getattr(filter_native_stderr, "installed", False):
        return
    try:
        original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:
        return
    filter_native_stderr.installed = True

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as source:
            pending = b""
            while chunk := source.read(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not ABSL_LINE.match(line):
                        os.write(original, line + b"\n")
            if pending and not ABSL_LINE.match(pending):
                os.write(original, pending)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # closes the pipe's last writer: the pump drains and ends
        thread.join(timeout=2.0)

    atexit.register(restore)
