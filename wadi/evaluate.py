"""`python -m wadi.evaluate model=<export dir | .ckpt | teacher dir> eval=coco2014` (or coco2017, toy).

Teacher rows: `model=<diffusers dir> teacher_steps=25 guidance_scale=3.0`; hybrid rows: `hybrid_k=1` (a merged
export records its teacher; `teacher=<dir>` overrides it). Writes `<out>/metrics.json` and `<out>/grid.png`;
generated images go to `<out>/shards/shard_XXXXX.npz` (protocol images + per-image features and CLIP scores), and a rerun skips
the shards already there. Under torchrun every rank generates its own shards (shard s on rank s mod W) and
rank 0 computes the metrics. The library is wadi.evaluation (protocols and the sharded run); the generation
keys are conf/generation/default.yaml's.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

import wadi.config  # noqa: F401  (registers resolvers)

# Re-exported: these lived here before wadi.evaluation (other modules' tests and experiments import them).
from wadi.evaluation import (  # noqa: F401
    CocoEvaluator,
    Generate,
    ToyPromptEvaluator,
    default_out,
    evaluate,
    evaluate_prompts,
    measure,
)

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(wadi.config.CONF_DIR), config_name="evaluate")
def _main(cfg: DictConfig) -> None:
    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    evaluate(cfg)


def main() -> None:
    """`python -m wadi.evaluate key=value ...`; `--help` lists this command's options."""
    from wadi.cli_help import exit_if_help

    exit_if_help(sys.argv[1:], "wadi.evaluate", __doc__, "evaluate.yaml")
    _main()


if __name__ == "__main__":
    main()
