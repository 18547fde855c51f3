"""Prompt data for distillation: prompt files (`prompts`), the stream of batches, the embedding cache (`cache`).

Nothing is imported here, so `import wadi.data.prompts` stays light (no safetensors, no Lightning).
"""
