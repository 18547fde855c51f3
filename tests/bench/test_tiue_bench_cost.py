"""experiments/tiue/bench_cost.py on a tiny U-Net (CPU): it runs, and its FLOP count ranks the students."""

from __future__ import annotations


def test_bench_cost_tiny(tmp_path):
    import experiments.tiue.bench_cost as bench

    out = tmp_path / "cost.json"
    args = ["--tiny", "--batches", "1", "--warmup", "0", "--iters", "1", "--out", str(out)]
    result = bench.main([*args, "--students", "onestep", "tiue", "ddim4"])
    rows = result["students"]
    assert out.is_file()
    # the encoder once, the decoder 4 times: more than one U-Net evaluation, less than four
    assert 1.0 < rows["tiue"]["flops_vs_onestep"] < rows["ddim4"]["flops_vs_onestep"] == 4.0
    assert all(r["latency_ms_batch1"] > 0 for r in rows.values())
