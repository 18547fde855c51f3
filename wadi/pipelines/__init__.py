"""Diffusers pipelines for wadi students that stock pipelines cannot run (TiUE)."""
