"""rechar: cross-stack characterization of deep-learning recommendation inference."""

__version__ = "0.1.0"
