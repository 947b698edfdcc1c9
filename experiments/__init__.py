"""Experiment drivers that regenerate figures/ (run from the repository root: python -m experiments.figures).

They use micl_probe only through its API; the library never imports them."""
