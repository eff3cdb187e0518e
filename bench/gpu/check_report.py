"""``check.md``: the GPU check's results (``check.json``) as Markdown tables."""

from __future__ import annotations


def _env(env: dict) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    return [f"Device: {env.get('device')} (sm {'.'.join(map(str, env.get('capability', [])))}, "
            f"{env.get('memory_gib')} GiB, driver {env.get('driver')}, CUDA {env.get('torch_cuda')}, "
            f"Python {env.get('python')}).", "", f"Libraries: {versions}.", ""]


def _parts(parts: dict) -> list[str]:
    lines = ["| part | status | seconds |", "|---|---|---:|"]
    lines += [f"| {name} | {p.get('status')} {p.get('reason', '')} | {p.get('seconds', '')} |"
              for name, p in parts.items()]
    return lines + [""]


def _tests(cases: list[dict]) -> list[str]:
    lines = ["| gpu test | outcome | seconds | message |", "|---|---|---:|---|"]
    lines += [f"| {c['test']} | {c['outcome']} | {c['seconds']:.1f} | {c['message'].replace('|', '/')} |"
              for c in cases]
    return lines + [""]


def _default_model(result: dict) -> list[str]:
    from train_report import memory_cells
    from windows import spread_text

    t = result.get("train", {})
    lines = [f"Default model: {result.get('model')}.", "",
             "| method | steps | micro-batch x accumulation | non-pad tokens | tokens/s: median [min-max] (windows) "
             "| MFU | peak GiB | estimated GiB | measured / estimated | checkpointing | loss first -> last |",
             "|---|---:|---|---:|---|---:|---:|---:|---:|---|---|"]
    if t:
        mfu = f"{t['mfu']:.1%}" if t.get("mfu") else "–"
        memory = memory_cells({**t, "memory_kind": t.get("peak_memory_kind")})
        lines.append(f"| {t['method']} | {t['steps']} | {t['micro_batch']} x {t['gradient_accumulation']} | "
                     f"{t['non_pad_tokens']} | {spread_text(t.get('windows'))} | {mfu} | {memory} | "
                     f"{t['first_loss']:.3f} -> {t['final_loss']:.3f} |")
    gens = result.get("generation", [])
    if gens:
        lines += ["", "| generation (greedy) | batch | prompts | max new tokens | seconds "
                  "| new tokens/s: median [min-max] (batches) |", "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {g['model']} | {g['batch_size']} | {g['prompts']} | {g['max_new_tokens']} | {g['seconds']} "
                  f"| {spread_text(g.get('windows'), '{:.0f}')} |" for g in gens]
    return lines + [""]


def markdown(results: dict) -> str:
    """All tables of a (possibly partial) check.json."""
    lines = [f"# GPU check, {results.get('started')}", ""]
    if "env" in results:
        lines += _env(results["env"])
    lines += _parts(results.get("parts", {}))
    if "tests" in results:
        lines += _tests(results["tests"])
    from train_report import table

    for part, what in (("train_8b", "TRL defaults vs ours at matched settings"), ("levers_8b", "the speed levers")):
        if part in results:
            bench = results[part]
            lines += [f"Llama-3-8B shape, random weights, QLoRA NF4, sequence length 2048, {what}:", "",
                      bench.get("settings", ""), "", table(bench.get("results", {})), ""]
    if "default_model" in results:
        lines += _default_model(results["default_model"])
    return "\n".join(lines)
