"""Measuring: generator quality and privacy metrics, results tables, the HTML report, the
ablation experiments."""
