"""Lightning callbacks: sample grids, evaluation, atomic checkpoint writes."""
