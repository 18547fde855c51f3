"""`python -m wadi.train [overrides]`: compose the config, build the pieces, fit, export, report.

Everything here is wiring; the pieces are importable and tested on their own.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

import wadi.config
from wadi.adapters import get_adapter
from wadi.adapters.base import role_adapters
from wadi.backbones.loading import BackboneConfig, build_denoiser
from wadi.config import ConfigError, validate_train_config  # (importing wadi.config registers resolvers)


def count_parameters(
    backbone_cfg: dict,
    rank: int,
    fake_rank: int,
    adapter: dict | None = None,
    kinds: dict[str, str] | None = None,
) -> dict[str, int]:
    """Build the denoiser on the meta device (no weights) and count parameters per role. `kinds`: each role's
    adapter kind (None: `adapter`'s kind, LoRaD by default, for both)."""
    cfg = BackboneConfig.from_mapping(backbone_cfg)
    denoiser = build_denoiser(cfg, meta=True)
    model = denoiser.model
    base = sum(p.numel() for p in model.parameters())
    kinds = kinds or {"generator": get_adapter(adapter).name, "fake_score": get_adapter(adapter).name}
    adapters = role_adapters(adapter, kinds)
    for role, rank_ in (("generator", rank), ("fake_score", fake_rank)):
        adapters[role].attach(model, role, rank_, cfg.targets(role, adapters[role]))
    return {
        "teacher (frozen base)": base,
        "generator": sum(p.numel() for p in adapters["generator"].parameters(model, "generator")),
        "fake_score": sum(p.numel() for p in adapters["fake_score"].parameters(model, "fake_score")),
    }


def equal_budgets(backbone_cfg: dict, lorad_rank: int, adapter: dict | None = None, role: str = "generator"):
    """Each kind's rank whose trainable count for `role` comes closest to LoRaD at `lorad_rank` (meta device).
    `adapter`: the run's adapter node (its targets serve its own kind)."""
    from wadi.adapters.budget import count, equal_budget, layer_shapes

    cfg = BackboneConfig.from_mapping(backbone_cfg)
    model = build_denoiser(cfg, meta=True).model
    adapters = role_adapters(adapter, {k: k for k in ("lorad", "lora", "dora", "full")})
    lorad = adapters["lorad"]
    target = count(lorad, layer_shapes(model, cfg.targets(role, lorad), even_only=True), lorad_rank)
    return [
        equal_budget(a, layer_shapes(model, cfg.targets(role, a), even_only=a.name == "lorad"), target)
        for a in adapters.values()
    ]


def dry_run(cfg: DictConfig) -> dict[str, int]:
    from rich.console import Console
    from rich.table import Table

    typed = validate_train_config(cfg)
    rank, fake_rank = typed.generator.rank, typed.fake_score.rank
    kinds = {"generator": typed.generator.adapter, "fake_score": typed.fake_score.adapter}
    adapter = cfg.get("adapter")
    adapter = OmegaConf.to_container(adapter, resolve=True) if adapter is not None else None
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    counts = count_parameters(backbone, rank, fake_rank, adapter, kinds)
    title = (
        f"wadi dry run: backbone={cfg.backbone.name} generator={kinds['generator']} r={rank} "
        f"fake_score={kinds['fake_score']} r={fake_rank}"
    )
    table = Table(title=title)
    table.add_column("role")
    table.add_column("parameters", justify="right")
    table.add_column("trainable", justify="right")
    base = counts["teacher (frozen base)"]
    for role, n in counts.items():
        share = "-" if role.startswith("teacher") else f"{n / base:.2%} of base"
        table.add_row(role, f"{n:,} ({n / 1e6:.2f}M)", share)
    console = Console()
    console.print(table)
    budgets = equal_budgets(backbone, rank, adapter)
    target = budgets[0].target
    eq = Table(
        title=f"equal budgets: the generator's LoRaD at r={rank} trains {target:,}; each kind's closest rank"
    )
    eq.add_column("generator.adapter")
    eq.add_column("rank", justify="right")
    eq.add_column("trainable", justify="right")
    eq.add_column("vs LoRaD", justify="right")
    for b in budgets:
        rank_text = "-" if b.rank is None else str(b.rank)
        eq.add_row(b.kind, rank_text, f"{b.count:,}", f"{b.gap:+.3%}")
    console.print(eq)
    for b in budgets:
        if b.kind == kinds["generator"] and b.rank is not None and b.kind != "lorad":
            print(
                f"equal budget: generator.adapter={b.kind} generator.rank={b.rank} trains {b.count:,} parameters, "
                f"LoRaD r={rank} trains {target:,} ({b.gap:+.3%})"
            )
    return counts


def resolve_run_dir(cfg: DictConfig) -> str:
    if cfg.get("run_dir"):
        return str(cfg.run_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir
    except ValueError:  # composed outside a Hydra app (tests, notebooks)
        return str(Path(cfg.output_root) / cfg.name)


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str) -> str | None:
    """wadi.runs.resolve_ckpt_path (kept here: scripts import it from wadi.train)."""
    from wadi.runs import resolve_ckpt_path as resolve

    return resolve(ckpt_path, run_dir)


def _instantiate_plain(config, **kwargs):
    """hydra's instantiate, re-raising the builder's own error (with its message) instead of a wrapper."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(config, **kwargs)
    except InstantiationException as err:
        if err.__cause__ is not None:
            raise err.__cause__ from None
        raise


def check_prompts(datamodule) -> None:
    """Read the training prompts now (they load lazily otherwise, after the model): a missing, unreadable or
    mostly malformed prompt file becomes one ConfigError naming `dataset.source`."""
    if not hasattr(datamodule, "prompts"):
        return
    try:
        datamodule.prompts()
    except (OSError, ValueError) as err:
        raise ConfigError(f"dataset.source: {err}") from None


def build_module(cfg: DictConfig, **kwargs):
    """The configured module; its nested nodes (method, optimizer) are built by the module, and `kwargs`
    (text_encoder, run_config) pass through as given."""
    return _instantiate_plain(cfg.module, _convert_="all", _recursive_=False, **kwargs)


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit WaDi as configured; returns (metrics, objects)."""
    import lightning as L
    from hydra.utils import instantiate

    from wadi import runs
    from wadi.callbacks.checkpoint_io import AtomicCheckpointIO
    from wadi.console import quiet_console
    from wadi.distributed import is_sharded
    from wadi.export import export_adapters, export_merged

    validate_train_config(cfg)  # one clean error naming the key, before anything slow loads
    runs.check_training_config(cfg)  # max_steps >= 1 (trainer.max_steps too)
    quiet_console()  # each Lightning line once, no tips or third-party deprecations
    if cfg.dry_run:
        return {"parameters": dry_run(cfg)}, {}

    from wadi.backbones.loading import check_layout

    check_layout(cfg.backbone.pretrained, cfg.backbone.kind)  # fail before anything slow, naming the path
    run_dir = resolve_run_dir(cfg)
    with open_dict(cfg):
        cfg.run_dir = run_dir
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    # The frozen text encoder and VAE stay in eval mode on purpose (no dropout in the teacher's parts).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    datamodule = _instantiate_plain(cfg.dataset, _convert_="all")
    check_prompts(datamodule)  # a missing or malformed prompt file fails here, before any model loads
    runs.prepare_run_dir(cfg, run_dir, ckpt_path)  # no mixed runs; a refused resume leaves config.yaml as is
    (Path(run_dir) / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    # With a text-embedding cache the module is given the cache as its text encoder, and the backbone's is never
    # loaded (T5-XXL alone is ~9.5 GB in fp16).
    text_encoder = datamodule.text_encoder() if hasattr(datamodule, "text_encoder") else None
    module = build_module(cfg, text_encoder=text_encoder, run_config=resolved)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if cfg.get("eval") and cfg.get("eval_callback"):
        callbacks.append(instantiate(cfg.eval_callback, evaluator=cfg.eval))
    logger = False
    if cfg.get("logger"):  # W&B: a resume continues the run's W&B run; every logger gets the whole config
        logger = instantiate(cfg.logger, **runs.logger_kwargs(cfg.logger, run_dir, ckpt_path is not None))
        logger.log_hyperparams(resolved)
    callbacks = runs.with_run_checkpoint(callbacks, run_dir, cfg)  # checkpoints in <run_dir>/checkpoints
    callbacks.append(runs.ConfiguredLearningRates())  # a resume with a new lr trains at it
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()])
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    objects: dict[str, Any] = {
        "module": module,
        "trainer": trainer,
        "datamodule": datamodule,
        "run_dir": run_dir,
    }
    if cfg.export and trainer.is_global_zero:
        export_dir = Path(run_dir) / "export"
        # trainer=fsdp leaves the base in shards: merge into a whole base rebuilt from disk instead.
        whole = _whole_copy(cfg, module) if is_sharded(module) else module
        objects["adapters"] = export_adapters(whole, export_dir / "adapters.safetensors")
        objects["merged"] = export_merged(whole, export_dir / "merged")
    if trainer.is_global_zero:
        eval_name = cfg.eval.get("name") if cfg.get("eval") else None
        own = hasattr(
            module.student, "export_info"
        )  # a method's own student (TiUE, SwD): its pipeline, not stock
        note = (
            f"the {module.method.name} student: wadi.sample or its custom pipeline"
            if own
            else "stock diffusers, one step"
        )
        print("\n" + runs.final_report(trainer, run_dir, metrics, objects, eval_name, merged_note=note))
    return metrics, objects


def _whole_copy(cfg: DictConfig, module):
    """The run's adapters (and EMA) on a whole frozen base loaded from disk, in the trained base's dtype."""
    import torch

    fresh = build_module(cfg, text_encoder=False)
    keep = module.adapter_keys()
    adapters = {k: v.detach().cpu() for k, v in module.state_dict().items() if k in keep}
    fresh.load_state_dict(adapters, strict=False)
    frozen = next(p for p in module.denoiser.model.parameters() if not p.requires_grad)
    if frozen.dtype != torch.float32:
        fresh.cast_frozen(frozen.dtype)
    return fresh


@hydra.main(version_base="1.3", config_path=str(wadi.config.CONF_DIR), config_name="config")
def _main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    except ConfigError as err:  # a user's mistake: one paragraph, no traceback
        print(f"wadi.train: configuration error: {err}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("train/loss_generator")


def main() -> float | None:
    """`python -m wadi.train [overrides]`; `eval=null` (any `group=null`) turns that group off, as `~eval` does."""
    from wadi.cli_help import exit_if_help

    exit_if_help(sys.argv[1:], "wadi.train", __doc__, "config.yaml")
    sys.argv[1:] = wadi.config.null_group_overrides(sys.argv[1:])
    return _main()


if __name__ == "__main__":
    main()
