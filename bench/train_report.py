"""The train benchmark's results (``bench/bench_train.py``, the GPU check's 8B parts) as one Markdown table."""

from __future__ import annotations

from windows import spread_text

SIDES = {"ours": "ours", "trl": "trl-defaults"}
GIB = 2**30
CUDA_PEAK_KIND = "cuda_max_allocated"


def _fmt(value, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def memory_cells(r: dict) -> str:
    """Measured peak | estimated peak | measured / estimated | checkpointing (switched on by the estimate?)."""
    estimate = r.get("memory_estimate") or {}
    measured, estimated = r["peak_memory_bytes"] / GIB, (estimate.get("peak_bytes") or 0) / GIB
    ratio = f"{measured / estimated:.2f}" if estimated and r["memory_kind"] == CUDA_PEAK_KIND else "–"
    checkpointing = {True: "on", False: "off"}.get(estimate.get("gradient_checkpointing"), "?")
    if estimate.get("checkpointing_switched_on"):
        checkpointing += " (switched on: estimate over free memory)"
    return f"{measured:.2f} ({r['memory_kind']}) | {_fmt(estimated or None, '{:.2f}')} | {ratio} | {checkpointing}"


def table(results: dict[str, dict]) -> str:
    lines = ["| variant | non-pad tokens | steady tokens/s: median [min-max] (windows) | MFU | all-steps tokens/s "
             "| setup s | peak GiB | estimated GiB | measured / estimated | checkpointing | final train loss "
             "| held-out loss |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {SIDES.get(name, name)} | failed: {r['error'][:120]} |||||||||||")
            continue
        lines.append(
            f"| {SIDES.get(name, name)} | {r['tokens']} | {spread_text(r.get('windows'))} | "
            f"{_fmt(r.get('mfu'), '{:.1%}')} | {r['tokens'] / r['runtime_s']:.0f} | {r['setup_s']:.1f} | "
            f"{memory_cells(r)} | {r['final_train_loss']:.4f} | {_fmt(r.get('heldout_loss'), '{:.4f}')} |"
        )
    return "\n".join(lines)
