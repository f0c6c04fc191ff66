"""The README's quick-start commands, read from README.md itself, so CI runs them as printed.

    python .ci/readme.py install-and-run   # first command of "## Quick start"
    python .ci/readme.py tests             # the test command of "## Quick start"
    python .ci/readme.py check-ap LOG      # the quick start's log reports COCO AP (exit 1 if not)

The quick start is the first two ```bash blocks under "## Quick start": the first installs the
core package and runs the main job, the second installs the test extras and runs the tests.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Quick start"
MIN_SEGM_AP = 0.5  # the quick start reaches about 0.87; a broken model stays near 0


def quick_start_blocks(text: str) -> list[str]:
    """The ```bash blocks of the README's quick-start section, in order, each one command."""
    start = text.index(SECTION)
    following = text.find("\n## ", start + len(SECTION))
    section = text[start:following if following >= 0 else len(text)]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    commands = [" ".join(line.rstrip("\\").strip() for line in block.strip().splitlines())
                for block in blocks]
    if len(commands) < 2:
        raise SystemExit(f"{README}: '{SECTION}' needs two ```bash blocks (install and run, tests), "
                         f"found {len(commands)}")
    return commands[:2]


def reported_ap(log: str) -> dict[str, float]:
    """{"bbox": AP, "segm": AP} from the metrics line the quick start prints."""
    for line in reversed(log.splitlines()):
        line = line.strip()
        if line.startswith("{") and '"segm"' in line:
            metrics = json.loads(line)
            return {task: float(values["AP"]) for task, values in metrics.items()}
    raise SystemExit("the quick start printed no COCO metrics line ({\"bbox\": ..., \"segm\": ...})")


def main(argv: list[str]) -> int:
    commands = quick_start_blocks(README.read_text())
    if argv[:1] == ["install-and-run"]:
        print(commands[0])
    elif argv[:1] == ["tests"]:
        print(commands[1])
    elif argv[:1] == ["check-ap"] and len(argv) == 2:
        ap = reported_ap(Path(argv[1]).read_text())
        print(f"quick start AP: {ap}")
        if ap.get("segm", 0.0) < MIN_SEGM_AP:
            print(f"segm AP {ap.get('segm')} is below {MIN_SEGM_AP}", file=sys.stderr)
            return 1
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
