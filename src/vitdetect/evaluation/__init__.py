"""`evaluate()`: metrics on a split, robustness under perturbations, temperature calibration."""
