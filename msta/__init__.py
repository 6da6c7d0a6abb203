"""msta: MSTA adapters for CLIP-style video-language models, with the description consistency loss."""

__version__ = "0.1.0"
