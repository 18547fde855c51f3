"""Diffusers pipelines for wadi exports (custom_pipeline files, no wadi import inside)."""
