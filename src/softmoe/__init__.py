"""Reproduction of "Beyond Parameter Count: Implicit Bias in Soft Mixture of Experts"."""
__version__ = "0.1.0"
