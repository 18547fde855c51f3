"""Metrics that judge generators: the toy world's (toy.py) and, later, FID / CLIP score on real data."""
