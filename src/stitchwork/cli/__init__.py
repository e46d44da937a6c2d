"""The ``stitchwork`` command line (Typer + Rich)."""
