"""Command-line subcommand of keras_maskrcnn.export (placeholder until its issue lands)."""


def add_subcommand(subparsers) -> None:
    """Registers nothing yet."""
