"""Diffusers pipelines for wadi students that stock pipelines cannot run (TiUE, SwD): custom_pipeline files with no
wadi import inside."""
