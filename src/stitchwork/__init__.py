"""stitchwork: a job orchestrator for coding agents."""

__version__ = "0.1.0"
