"""Figures and tables rebuilt from saved results (metrics, plots, robustness): no torch."""
