"""Old name of `wadi.samplers` (the library; `wadi.sample` is the command), kept for existing imports."""

from wadi.diffusion import ddim_step, ddim_timesteps, generator_schedule
from wadi.samplers import ddim_sample, hybrid_sample, one_step, seeded_noise

__all__ = [
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "generator_schedule",
    "hybrid_sample",
    "one_step",
    "seeded_noise",
]
