"""Plumbing every stage uses: atomic writes, output-folder locks, progress, distributed runs, tracking."""
