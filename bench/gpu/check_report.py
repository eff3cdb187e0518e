"""``check.md``: the GPU check's results (``check.json``) as Markdown tables."""

from __future__ import annotations

MIB = 2**20


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
    t = result.get("train", {})
    lines = [f"Default model: {result.get('model')}.", "",
             "| method | steps | micro-batch x accumulation | non-pad tokens | train s | tokens/s | peak memory (MiB) "
             "| MFU | loss first -> last |", "|---|---:|---|---:|---:|---:|---:|---:|---|"]
    if t:
        mfu = f"{t['mfu']:.1%}" if t.get("mfu") else "–"
        lines.append(f"| {t['method']} | {t['steps']} | {t['micro_batch']} x {t['gradient_accumulation']} | "
                     f"{t['non_pad_tokens']} | {t['train_runtime_s']:.1f} | {t['tokens_per_s']:.0f} | "
                     f"{t['peak_memory_bytes'] / MIB:.0f} | {mfu} | {t['first_loss']:.3f} -> {t['final_loss']:.3f} |")
    gens = result.get("generation", [])
    if gens:
        lines += ["", "| generation (greedy) | batch | prompts | max new tokens | seconds | new tokens/s |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {g['model']} | {g['batch_size']} | {g['prompts']} | {g['max_new_tokens']} | {g['seconds']} "
                  f"| {g['new_tokens_per_s']} |" for g in gens]
    return lines + [""]


def markdown(results: dict) -> str:
    """All tables of a (possibly partial) check.json."""
    lines = [f"# GPU check, {results.get('started')}", ""]
    if "env" in results:
        lines += _env(results["env"])
    lines += _parts(results.get("parts", {}))
    if "tests" in results:
        lines += _tests(results["tests"])
    if "default_model" in results:
        lines += _default_model(results["default_model"])
    if "train_8b" in results:
        from bench_train import table

        bench = results["train_8b"]
        lines += ["Llama-3-8B shape, random weights, QLoRA NF4, sequence length 2048:", "",
                  bench.get("settings", ""), "", table(bench.get("results", {})), ""]
    return "\n".join(lines)
