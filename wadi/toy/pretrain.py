"""`python -m wadi.toy.pretrain`: train the toy assets shipped in wadi/assets/toy, stage by stage.

Select stages with `stages=[vae,sd]` (vae, classifier, sd, pixart; see wadi.toy.training, the library this
command runs); each writes the asset layout under `out_dir`. The diffusion stages read the VAE from
`out_dir` when the vae stage ran, else from `init_dir`. Config: conf/toy_pretrain/config.yaml.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

import wadi.config  # noqa: F401  (registers resolvers)

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(wadi.config.CONF_DIR / "toy_pretrain"), config_name="config")
def main(cfg: DictConfig) -> None:
    from wadi.toy.training import pretrain  # imported here: `--help` answers without loading Lightning

    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    pretrain(cfg)


if __name__ == "__main__":
    import sys

    from wadi.cli_help import exit_if_help

    exit_if_help(sys.argv[1:], "wadi.toy.pretrain", __doc__, "toy_pretrain/config.yaml")
    main()
