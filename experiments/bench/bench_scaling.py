"""Weak scaling of the WaDi step under `trainer=ddp` / `trainer=fsdp` (issue 6, item 3).

The per-GPU batch stays fixed. The step runs on 1 device and on N devices, one process per device,
launched by Lightning exactly as `wadi.train` does. Efficiency is (global img/s on N) / (N x img/s on 1),
for the same strategy. Each (strategy, devices) point runs in a fresh worker process, so the GPU state
does not leak from one point to the next. The step is `bench_step.py`'s wadi variant: `WaDiModule` on a
full-size random-init backbone, with the strategies wadi ships.

    python -m experiments.bench.bench_scaling --arch sd15 --devices 1 2 4 --strategies ddp fsdp --out DIR
    python -m experiments.bench.bench_scaling --arch tiny_sd --device cpu --devices 1 2 --batch 2  # smoke

(from the repository root: the workers run as `python -m` from there too)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import experiments.bench.bench_step as bs

REPO = Path(__file__).resolve().parents[2]


def strategy(name: str):
    from wadi.distributed import AdapterDDPStrategy, AdapterFSDPStrategy

    cls = {"ddp": AdapterDDPStrategy, "fsdp": AdapterFSDPStrategy}[name]
    return cls(broadcast_buffers=False, find_unused_parameters=False)


def worker(args) -> None:
    """One (strategy, devices) point; rank 0 appends its row to <out>/scaling.jsonl."""
    import lightning as L

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    arch = bs.ARCHES[args.arch]
    module = bs.build_wadi_module(
        args.arch, device, fused_adamw=device.type == "cuda", gradient_checkpointing=args.ckpt
    )
    clock = bs.StepClock(device)
    steps = args.warmup + args.steps
    batch = bs.make_batch(arch, args.batch, device, seed=local_rank)
    loader = torch.utils.data.DataLoader(bs.RepeatBatch(batch, steps), batch_size=None, shuffle=False)
    trainer = L.Trainer(
        accelerator=args.device,
        devices=args.devices,
        strategy=strategy(args.strategy),
        precision="bf16-mixed" if args.device == "cuda" else "32-true",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        benchmark=args.device == "cuda",
        use_distributed_sampler=False,
        callbacks=[bs.lightning_clock(clock)],
    )
    trainer.fit(module, loader)
    if trainer.global_rank != 0:
        return
    timed = clock.times[args.warmup :]
    median = statistics.median(timed)
    row = {
        "arch": args.arch,
        "strategy": args.strategy,
        "devices": args.devices,
        "ckpt": args.ckpt,
        "batch_per_device": args.batch,
        "step_ms": median * 1e3,
        "step_ms_min": min(timed) * 1e3,
        "step_ms_max": max(timed) * 1e3,
        "img_per_s": args.devices * args.batch / median,
        "peak_gib_rank0": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    with (args.out / "scaling.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def table(rows: list[dict]) -> str:
    """Rows with weak-scaling efficiency against the same strategy's 1-device row."""
    single = {(r["strategy"], r["ckpt"]): r["img_per_s"] for r in rows if r["devices"] == 1}
    lines = [
        "| arch | strategy | ckpt | devices | step ms (min-max) | global img/s | efficiency | peak GiB (rank 0) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        one = single.get((r["strategy"], r["ckpt"]))
        eff = r["img_per_s"] / (r["devices"] * one) if one else float("nan")
        peak = r["peak_gib_rank0"]
        lines.append(
            f"| {r['arch']} | {r['strategy']} | {r['ckpt']} | {r['devices']} | {r['step_ms']:.0f} "
            f"({r['step_ms_min']:.0f}-{r['step_ms_max']:.0f}) | {r['img_per_s']:.2f} | {eff:.3f} | "
            f"{'-' if peak is None else f'{peak:.2f}'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sd15", choices=sorted(bs.ARCHES))
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--strategies", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    p.add_argument("--ckpt", action="store_true", help="gradient checkpointing")
    p.add_argument("--batch", type=int, default=16, help="per device")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"]
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--timeout", type=int, default=600, help="seconds per point")
    # internal: one point, in a fresh process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--strategy", default="ddp", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        args.devices = args.devices[0]
        worker(args)
        return []
    results = args.out / "scaling.jsonl"
    start = sum(1 for _ in results.open()) if results.exists() else 0
    for name in args.strategies:
        for n in args.devices:
            cmd = [sys.executable, "-m", "experiments.bench.bench_scaling", "--worker", "--strategy", name]
            cmd += [
                "--arch",
                args.arch,
                "--devices",
                str(n),
                "--batch",
                str(args.batch),
                "--device",
                args.device,
            ]
            cmd += ["--warmup", str(args.warmup), "--steps", str(args.steps), "--out", str(args.out)]
            cmd += ["--ckpt"] if args.ckpt else []
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
                ok = done.returncode == 0
                tail = done.stderr[-1500:]
            except subprocess.TimeoutExpired:
                ok, tail = False, f"timed out after {args.timeout} s"
            if not ok:
                print(f"{name} x{n}: failed\n{tail}", file=sys.stderr, flush=True)
    rows = [json.loads(line) for line in results.read_text().splitlines()[start:]] if results.exists() else []
    print(table(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
