"""prunebench: ablation runner for token pruning in ViT detectors."""

__version__ = "0.1.0"
