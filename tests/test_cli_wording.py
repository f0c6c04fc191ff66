"""CLI wording stays in the CLI: library messages name Python arguments (`max_image_pixels`),
and the command line shows its flags in their place, in one-line errors and in log lines."""

from __future__ import annotations

import argparse
import ast
import logging
import re
from pathlib import Path

import pytest

from keras_maskrcnn.cli import (
    ARGUMENT_FLAGS,
    CALL_COMMANDS,
    FlagWording,
    build_parser,
    flag_wording,
    main,
)

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "keras_maskrcnn"
# Modules whose messages name a command of their own (`python -m ...custom_roi_align --build`).
OWN_COMMAND = {"ops/custom_roi_align.py", "ops/roi_common.py"}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of `parser` and of its subcommands, recursively."""
    flags = set()
    for action in parser._actions:
        flags.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= parser_flags(sub)
    return flags


@pytest.mark.parametrize("message, expected", [
    ("lower `batch_size`", "lower --batch-size"),
    ("`batch_size=3` must be a multiple", "--batch-size 3 must be a multiple"),
    ("or pass `overwrite=True` to start again", "or pass --overwrite to start again"),
    ("`strategy='multi_worker'` reads", "--strategy multi_worker reads"),
    ("fix `val_source.images_dir` or the json", "fix --val-images or the json"),
    ("`label_key` applies to `fmt='via'` only", "--label-key applies to --from via only"),
    ("run `convert_pretrained('coco-v2')` once",
     "run `keras-maskrcnn convert torchvision --weights coco-v2` once"),
    # names the command line has no flag for are left as they are
    ("`config.json` and `model.weights.h5`; `num_classes=3`",
     "`config.json` and `model.weights.h5`; `num_classes=3`"),
])
def test_flag_wording(message, expected):
    assert flag_wording(message) == expected


def test_every_mapped_flag_is_a_flag_of_the_command_line():
    flags = parser_flags(build_parser())
    assert set(ARGUMENT_FLAGS.values()) - flags == set()
    for template in CALL_COMMANDS.values():
        words = template.format("coco-v2").split()
        assert words[0] == "keras-maskrcnn"
        build_parser().parse_args(words[1:])  # SystemExit if not a valid command line


def _string_constants(tree: ast.AST):
    """(line, text) of every string constant that is not a docstring."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            yield node.lineno, node.value


def test_library_messages_name_no_command_line_flags():
    """Outside cli.py and the subcommand modules (*/cli.py), no string names a flag of the
    command line: the library says `argument` and the CLI renders it (`flag_wording`)."""
    flags = parser_flags(build_parser())
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        name = path.relative_to(PACKAGE_DIR).as_posix()
        if path.name == "cli.py" or name in OWN_COMMAND:
            continue
        for line, text in _string_constants(ast.parse(path.read_text())):
            found += [f"{name}:{line}: {flag}" for flag in FLAG.findall(text) if flag in flags]
    assert found == []


def test_the_test_finds_a_flag_in_a_message():
    tree = ast.parse('"""Doc --images."""\ndef f():\n    raise ValueError(f"check --images {1}")\n')
    assert [FLAG.findall(text) for _, text in _string_constants(tree)] == [["--images"]]


def test_library_error_names_the_argument_and_cli_the_flag(tmp_path, capsys):
    from keras_maskrcnn.data.formats import convert

    with pytest.raises(ValueError, match=r"^`label_key` applies to `fmt='via'` only$"):
        convert("labelme", tmp_path, label_key="type")
    rc = main(["data", "convert", "--from", "labelme", str(tmp_path), "--output",
               str(tmp_path / "out.json"), "--label-key", "type"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["keras-maskrcnn data: error: --label-key applies to --from via only"]


def test_cli_log_lines_show_flags(tmp_path, caplog):
    """`main` puts `FlagWording` on the log handlers: a library warning naming an argument is
    shown with the flag; the handler is filtered once however often `main` runs."""
    annotations = tmp_path / "a.json"
    annotations.write_text('{"images": [], "annotations": [], "categories": []}')
    for _ in range(2):
        main(["data", "check", str(annotations)])
    handler = caplog.handler
    assert sum(isinstance(f, FlagWording) for f in handler.filters) == 1
    with caplog.at_level(logging.WARNING):
        logging.getLogger("keras_maskrcnn.x").warning("resuming with %s", "`batch_size` 2 -> 4")
    assert caplog.records[-1].getMessage() == "resuming with --batch-size 2 -> 4"
