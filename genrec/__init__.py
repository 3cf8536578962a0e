"""genrec: parameter-efficient fine-tuning of decoder LLMs for generative recommendation."""

__version__ = "0.1.0"
