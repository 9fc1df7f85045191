"""The targets and the Markdown report of benchmarks/gpu_suite.py, from its result (the JSON it writes).

    from benchmarks import gpu_suite_report
    text = gpu_suite_report.markdown(json.loads(Path("benchmarks/results/gpu_suite_cuda.json").read_text()), path)

Each target is reported as met (True), missed (False) or not measured (None, with why); nothing is
asserted. Not a script.
"""
from __future__ import annotations

TITLES = {
    "pytest": "CUDA tests (Triton compiled natively, models in bf16)",
    "softmax": "bench_softmax: fused row kernels vs copy bandwidth",
    "attention": "bench_attention: fused vs materialised vs SDPA",
    "train": "bench_train: gpt2 preset, bf16, torch.compile",
    "decode": "bench_decode: KV-cache decode vs uncached",
    "repro": "nanoGPT shakespeare_char recipe (5000 steps)",
}
LINEAR_EXPONENT = 1.1  # memory ~ T^p with p at most this counts as linear in T


def fmt(value, spec: str = ".3g", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def target(name: str, stage: str, goal: str, value: str, met: bool | None) -> dict:
    return {"name": name, "stage": stage, "target": goal, "value": value, "met": met}


def targets(stages: dict) -> list[dict]:
    """The issue's targets from the stages' results; not measured where a stage did not run."""
    def res(name):
        return (stages.get(name) or {}).get("result") or {}
    out = []
    t = res("softmax").get("targets", {}).get("bandwidth_80pct_for_T_ge_1024")
    out.append(target("softmax_bandwidth", "softmax", "fused row kernels >= 80% of the copy bandwidth, T >= 1024",
                      f"{t['met']}/{t['of']} rows, worst {fmt(t['worst'], '.0f')}%" if t and t["of"] else "not measured",
                      t["met"] == t["of"] if t and t["of"] else None))
    a = res("attention").get("targets", {})
    for key, name, goal, ok in (
            ("T2048_fused_5x_materialised", "attention_5x_materialised",
             "fused consmax attention at T = 2048 >= 5x faster than materialised", lambda r: r >= 5),
            ("T2048_fused_within_2x_sdpa", "attention_within_2x_sdpa",
             "fused consmax attention at T = 2048 within 2x of SDPA (fused ms / SDPA ms <= 2)", lambda r: r <= 2)):
        ratios = a.get(key) or []
        out.append(target(name, "attention", goal, " / ".join(f"{r:.2f}x" for r in ratios) + " (fwd / fwd+bwd)"
                          if ratios else "not measured", all(map(ok, ratios)) if ratios else None))
    exps = a.get("memory_exponent") or {}
    key = "fused_peak_bytes" if "fused_peak_bytes" in exps else "fused_saved_bytes"
    p = exps.get(key)
    out.append(target("attention_memory_linear", "attention", f"fused attention memory linear in T (T^p, p <= "
                      f"{LINEAR_EXPONENT})", f"p = {p:.2f} ({key})" if p is not None else "not measured",
                      p <= LINEAR_EXPONENT if p is not None else None))
    for variant in ("softmax", "consmax"):
        run = res("train").get(variant) or {}
        mfu = (run.get("ours") or {}).get("median", {}).get("mfu")
        ref = (run.get("mfu_reference") or {}).get("label", "")
        out.append(target(f"mfu_{variant}", "train", f"gpt2 MFU >= 50% (bf16, compile), {variant}",
                          f"{100 * mfu:.1f}% {ref}" if mfu is not None else "not measured",
                          mfu >= 0.5 if mfu is not None else None))
    for variant, d in (res("decode").get("targets", {}).get("kv_cache_5x_uncached") or {"softmax": None}).items():
        out.append(target(f"kv_cache_{variant}", "decode", f"KV-cache decode >= 5x uncached, {variant}",
                          f"{d['speedup']}x" if d else "not measured", d["met"] if d else None))
    return out


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def softmax_section(r: dict) -> list[str]:
    lengths = sorted({row["T"] for row in r["rows"]})
    cells: dict = {}
    for row in r["rows"]:
        cells.setdefault(row["variant"], {}).setdefault(row["T"], {})[row["mode"]] = row.get("pct_of_copy")
    rows = [[v, *(f"{fmt(c.get(T, {}).get('forward'), '.0f')} / {fmt(c.get(T, {}).get('forward+backward'), '.0f')}"
                  for T in lengths)] for v, c in cells.items()]
    return ["% of the copy bandwidth, forward / forward+backward (fused: " + str(r.get("fused")) + ")", "",
            *table(["variant", *(f"T = {T}" for T in lengths)], rows)]


def attention_section(r: dict) -> list[str]:
    def mib(row, name):
        n = row.get(f"{name}_peak_bytes") or row.get(f"{name}_saved_bytes")
        return row.get(f"{name}_error") or fmt(n / 2 ** 20 if n else None, ",.1f")
    rows = [[row["variant"], row["T"], row["mode"], fmt(row.get("fused_ms")), fmt(row.get("materialised_ms")),
             fmt(row.get("sdpa_ms")), fmt(row.get("fused_vs_materialised"), ".2f"), fmt(row.get("fused_vs_sdpa"), ".2f"),
             mib(row, "fused"), mib(row, "materialised"), mib(row, "sdpa")] for row in r["rows"]]
    exps = ", ".join(f"{k} {v:.2f}" for k, v in (r.get("targets", {}).get("memory_exponent") or {}).items())
    return [*table(["variant", "T", "mode", "fused ms", "materialised ms", "SDPA ms", "materialised / fused",
                    "fused / SDPA", "fused MiB", "materialised MiB", "SDPA MiB"], rows), "",
            "MiB: CUDA peak above the inputs during one call (bytes saved for backward where there is no CUDA). "
            f"Memory ~ T^p, p: {exps or '-'}"]


def train_section(r: dict) -> list[str]:
    rows = []
    for variant in ("softmax", "consmax"):
        run = r.get(variant)
        if not run:
            continue
        m, s = run["ours"]["median"], run["settings"]
        peak = m.get("peak_memory_bytes")
        rows.append([variant, (run["ours"]["runs"][0]["summary"] or {}).get("softmax_kernel", "-"), s["dtype"],
                     s["compile"], s["tokens_per_iter"], fmt(m["median_ms"], ".1f"), fmt(m["tokens_per_s"], ",.0f"),
                     "-" if m["mfu"] is None else f"{100 * m['mfu']:.1f}%", fmt(peak / 2 ** 30 if peak else None, ".2f")])
    return [f"data: {r.get('dataset', {}).get('how', '-')}", "",
            *table(["variant", "kernel", "dtype", "compile", "tokens/step", "ms/step (median)", "tokens/s", "MFU",
                    "peak GiB"], rows)]


def decode_section(r: dict) -> list[str]:
    s = r["settings"]
    rows = [[row["variant"], fmt(row["cached"]["tokens_per_s"], ",.0f"), fmt(row["uncached"]["tokens_per_s"], ",.0f"),
             fmt(row["speedup"], ".2f"), fmt(row["cached"]["prefill_ms"], ".3g"),
             "yes" if row["same_tokens"] else f"from step {row['first_difference']}"] for row in r["rows"]]
    return [f"batch {s['batch_size']}, prompt {s['prompt_len']}, {s['new_tokens']} new tokens, {s['dtype']}", "",
            *table(["variant", "cached tokens/s", "uncached tokens/s", "cached / uncached", "prefill ms",
                    "same tokens"], rows)]


def repro_section(r: dict) -> list[str]:
    rows = []
    for variant in ("softmax", "consmax"):
        run = r.get(variant)
        if run and "skipped" in run:
            rows.append([variant, "skipped: " + run["skipped"]] + ["-"] * 5)
        elif run:
            rows.append([variant, run.get("status"), run.get("iters"), fmt(run.get("best_val_loss"), ".4f"),
                         fmt(run.get("wall_time_s"), ".0f"), fmt(run.get("tokens_per_s"), ",.0f"), run.get("stop_reason")])
    return [f"nanoGPT's README: val loss {r.get('reference_val_loss')} (A100, about 3 minutes); data: "
            f"{r.get('dataset', {}).get('how', '-')}", "",
            *table(["variant", "status", "steps", "best val loss", "wall s", "tokens/s", "stop"], rows)]


SECTIONS = {"softmax": softmax_section, "attention": attention_section, "train": train_section,
            "decode": decode_section, "repro": repro_section}


def markdown(result: dict, json_path: str) -> str:
    env, stages = result["environment"], result["stages"]
    device = env.get("gpu_name") or f"CPU ({env.get('cpu_model')})"
    lines = [f"# gpu_suite: {device}, {env.get('date')}", ""]
    if result["mode"] == "cpu_smoke":
        lines += ["**CPU smoke run** (`--cpu_smoke`: tiny sizes, Triton's interpreter): it proves the code paths; "
                  "its figures mean nothing.", ""]
    lines += [f"- command: `{env.get('command')}`",
              f"- commit: {env.get('git_commit') or 'unknown (no git metadata)'}"
              + (" (uncommitted changes)" if env.get("git_dirty") else "")
              + f"; sources sha256 {(env.get('source_sha256') or '-')[:16]}",
              f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), Triton {env.get('triton')}, "
              f"Python {env.get('python')}"
              + (f"; driver {env.get('driver_version')}, CUDA driver API {env.get('cuda_version')}, "
                 f"compute capability {env.get('gpu_capability')}" if env.get("gpu_name") else ""),
              f"- wall time {result.get('wall_s')} s of --budget_s {result['settings']['budget_s']:g}; "
              f"failed stages: {', '.join(result.get('failed') or []) or 'none'}; figures: `{json_path}`",
              *([f"- environment: {env['error']}"] if env.get("error") else []), "",
              "## Stages", ""]
    rows = []
    for name, rec in stages.items():
        note = (rec.get("reason") or "").splitlines()[0][:160] if rec.get("reason") else ""
        if name == "pytest" and rec.get("result", {}).get("tests"):
            p = rec["result"]
            note = (f"{p['passed']} passed, {p['failed']} failed, {p['skipped']} skipped of {p['tests']} "
                    f"({p['workers']} workers)" + (f"; {note}" if note else ""))
        rows.append([name, rec["title"], rec["status"], fmt(rec["seconds"], ".1f"), note.replace("|", "/")])
    lines += table(["stage", "what", "status", "seconds", "note"], rows)
    lines += ["", "## Targets", ""]
    lines += table(["target", "value", "met"], [[t["target"], t["value"], {True: "met", False: "missed", None: "-"}[t["met"]]]
                                                for t in result.get("targets", [])])
    for name, section in SECTIONS.items():
        rec = stages.get(name) or {}
        if rec.get("result") and any(k for k in rec["result"] if k not in ("dataset", "reference_val_loss")):
            lines += ["", f"## {TITLES[name]}", ""]
            try:
                lines += section(rec["result"])
            except (KeyError, TypeError, ZeroDivisionError) as e:  # a partial result: say so, keep the rest
                lines += [f"(figures incomplete: {type(e).__name__}: {e}; see the JSON)"]
    return "\n".join(lines) + "\n"
