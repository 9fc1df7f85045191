"""The GPU work as one command: tests and benchmarks in a fixed time budget, every figure in one JSON.

GPU time is rare here (a lease of minutes, one chip), so everything a GPU should measure runs from this
one script, proven on CPU beforehand (--cpu_smoke). Stages, in order; each runs in its own processes
(a CUDA error or a hang cannot take the others down), is timed, and is recorded as ok, failed (with
its error and log) or skipped (with the reason); a failed stage does not stop the others:

  pytest     the CUDA test subset, kernels compiled natively (TRITON_INTERPRET unset): TEST_FILES, split
             over --pytest_workers processes (Triton's compilation is single-threaded)
  softmax    bench_softmax.py: fused row kernels per normaliser, rows T = 1k..8k, % of the copy bandwidth
  attention  bench_attention.py: fused consmax vs materialised vs SDPA, T = 512..8k: time, peak memory
  train      bench_train.py, gpt2 preset, bf16, torch.compile, gradient_accumulation_steps 1: tokens/s
             and MFU for softmax (SDPA) and consmax (the fused Triton attention)
  decode     bench_decode.py: KV-cache decode tokens/s against uncached, gpt2-sized model
  repro      nanoGPT's shakespeare_char recipe (6x6x384, 5000 steps; its README: val 1.4697 on an A100
             in about 3 minutes) for softmax, then consmax; --skip_repro skips it

The driver keeps a wall-clock budget (--budget_s): a stage starts only if its usual time (ESTIMATE_S, on
an H100/H200 with cold caches) fits in what is left, or it is skipped with that reason; every process
is stopped when the budget runs out. With the default 480 s the repro stage does not fit. Data sets the
stages need (shakespeare BPE, shakespeare_char) are used from data/ when prepared, else prepared into
the work folder (falling back to the repository's own source text for the throughput runs when the
Shakespeare package is missing).

Targets (reported as met / missed, never asserted): fused row kernels >= 80% of the copy bandwidth;
fused consmax attention at T = 2048 >= 5x faster than materialised and within 2x of SDPA, memory linear
in T; gpt2 MFU >= 50%; KV-cache decode >= 5x uncached.

    python benchmarks/gpu_suite.py                    # on a GPU machine: under 9 minutes on an H100/H200
    python benchmarks/gpu_suite.py --budget_s 1500    # room for the shakespeare_char reproduction
    python benchmarks/gpu_suite.py --cpu_smoke        # the same code paths on CPU, tiny sizes, Triton's interpreter

Output: --json (default benchmarks/results/gpu_suite_<cuda|cpu>.json: environment, every stage's
status, time, commands and full figures, the targets) and --md (the same path with .md: tables to read
and to paste into RESULTS.md); logs and intermediate files under --work_dir. Exit status 1 when a stage
failed, 0 otherwise (skipped stages do not count).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

from benchmarks import gpu_suite_report as report
from errors import ArgumentParser, UserError, run_cli, unknown_name_message
from train_args import settings_to_argv

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

TEST_FILES = ["tests/variations/test_triton_cuda.py", "tests/variations/test_triton_attention.py",
              "tests/variations/test_triton_softmax.py"]
SMOKE_TESTS = "consmax-bf16 or model_in_bf16 or decode_in_bf16"  # --cpu_smoke: every test function, a few cases
# the usual seconds of each stage on an H100/H200 with cold Triton and Inductor caches (estimates
# until a GPU run measures them; its JSON holds each stage's time), then in --cpu_smoke
ESTIMATE_S = {"pytest": 90, "softmax": 90, "attention": 30, "train": 150, "decode": 30, "repro": 420}
SMOKE_ESTIMATE_S = 5
CAP_S = {"pytest": 180, "softmax": 150, "attention": 75, "train": 270, "decode": 75}  # the most each may take
SMOKE_CAP_S = 300
STAGES = list(ESTIMATE_S)
TRAIN_VARIANTS = {"softmax": {}, "consmax": {"softmax_kernel": "triton"}}  # train.py settings; softmax: SDPA
# karpathy/nanoGPT config/train_shakespeare_char.py (its other settings are our defaults too)
NANOGPT_CHAR = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, bias=False, batch_size=64,
                    gradient_accumulation_steps=1, learning_rate=1e-3, max_iters=5000, lr_decay_iters=5000,
                    min_lr=1e-4, beta2=0.99, warmup_iters=100, eval_interval=250, eval_iters=200, log_interval=10)
NANOGPT_CHAR_VAL_LOSS = 1.4697  # nanoGPT's README, A100, about 3 minutes
TINY_MODEL = dict(n_layer=1, n_head=2, n_embd=32, block_size=32)
# per mode: the flags of each stage's script (sizes, device); smoke mode keeps every flag, tiny values
FLAGS = {
    "gpu": {
        "softmax": "--device cuda --dtype bfloat16 --lengths 1024 2048 4096 8192",
        "attention": "--device cuda --dtype bfloat16 --variants consmax --lengths 512 1024 2048 4096 8192",
        "train": "--preset gpt2 --device cuda --dtype bfloat16 --compile --iters 30 --skip 10",
        "train_extra": "--gradient_accumulation_steps 1",
        "decode": "--device cuda --dtype bfloat16 --variants softmax consmax --batch_size 4 --prompt_len 768 "
                  "--new_tokens 256 --repeats 2",
    },
    "cpu_smoke": {
        "softmax": "--device cpu --dtype bfloat16 --variants softmax consmax --lengths 16 33 --elements 2048 "
                   "--iters 1 --warmup 0",
        "attention": "--device cpu --dtype bfloat16 --variants consmax --lengths 16 40 --batch_size 1 --n_head 2 "
                     "--head_dim 16 --iters 1 --warmup 0",
        "train": "--preset gpt2 --device cpu --dtype float32 --no-compile --iters 3 --skip 1 --matmul_size 128",
        "train_extra": "--gradient_accumulation_steps 1 --batch_size 2 " + " ".join(
            f"--{k} {v}" for k, v in TINY_MODEL.items()),
        "decode": "--device cpu --dtype float32 --variants softmax consmax --softmax_kernel triton --batch_size 1 "
                  "--prompt_len 8 --new_tokens 4 --repeats 1 --vocab_size 64 " + " ".join(
                      f"--{k} {v}" for k, v in TINY_MODEL.items()),
    },
}
REPRO = {"gpu": dict(NANOGPT_CHAR, device="cuda", dtype="bfloat16", compile=True),
         "cpu_smoke": dict(NANOGPT_CHAR, **TINY_MODEL, batch_size=4, max_iters=4, lr_decay_iters=4, warmup_iters=1,
                           eval_interval=2, eval_iters=1, log_interval=1, device="cpu", dtype="float32", compile=False)}


class StageError(Exception):
    """A stage failed; `result` keeps what it measured before that."""

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result or {}


def build_parser():
    p = ArgumentParser(prog="gpu_suite.py", description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--budget_s", type=float, default=480,
                   help="wall-clock budget: stages that would not fit are skipped, processes stopped at the end")
    p.add_argument("--stages", nargs="+", default=STAGES, metavar="STAGE", help=f"stages to run: {' '.join(STAGES)}")
    p.add_argument("--skip_repro", action="store_true", help="skip the shakespeare_char reproduction")
    p.add_argument("--cpu_smoke", action="store_true",
                   help="the same code paths on CPU with tiny sizes and TRITON_INTERPRET=1 (a few tests only)")
    p.add_argument("--pytest_workers", type=int, default=None,
                   help="pytest processes of the test stage (default: 8 on a GPU machine, 2 in --cpu_smoke)")
    p.add_argument("--json", type=Path, default=None, help="output JSON (default benchmarks/results/gpu_suite_<dev>.json)")
    p.add_argument("--md", type=Path, default=None, help="output Markdown (default: --json with .md)")
    p.add_argument("--work_dir", type=Path, default=None, help="logs, data, intermediate JSON (default: --json without .json)")
    p.add_argument("--fail_stage", nargs="+", default=[], metavar="STAGE",
                   help="testing only: after these stages run, a command of theirs fails on purpose (the suite "
                        "must record it and go on)")
    return p


# ------------------------------------------------------------------------------------ the driver
class Suite:
    def __init__(self, args, mode: str):
        self.args, self.mode = args, mode
        self.deadline = time.monotonic() + args.budget_s
        self.work: Path = args.work_dir
        self.stage, self.stage_deadline = "", float("inf")
        self.commands: list[dict] = []
        self.datasets: dict[str, dict] = {}

    def remaining(self) -> float:
        """Seconds left of the budget."""
        return self.deadline - time.monotonic()

    def begin(self, stage: str):
        """Start timing `stage`: its commands stop at its cap (CAP_S) or at the budget's end."""
        cap = SMOKE_CAP_S if self.mode == "cpu_smoke" else CAP_S.get(stage)
        self.stage, self.stage_deadline = stage, time.monotonic() + cap if cap else float("inf")

    def env(self) -> dict:
        return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                "PYTHONUNBUFFERED": "1"}

    def start(self, argv: list[str], name: str, env: dict | None = None) -> dict:
        """Start argv (from the repository root, output to WORK/name.log); the handle for finish."""
        log = self.work / f"{name}.log"
        f = open(log, "w")
        f.write(f"$ {shlex.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**self.env(), **(env or {})}, start_new_session=True)
        f.close()
        return {"argv": argv, "log": str(log), "proc": proc, "t0": time.monotonic()}

    def finish(self, h: dict, cap: float | None = None) -> dict:
        """Wait for a started command (at most `cap` s from its start, and until the stage's cap and the
        budget's end); its record. A command still running then is stopped (its process group:
        SIGTERM, then SIGKILL) and counts as timed out."""
        proc = h.pop("proc")
        end = min(h["t0"] + (cap or float("inf")), self.stage_deadline, self.deadline)
        try:
            rc = proc.wait(max(1.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            rc = None
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(10)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
            proc.wait()
        h.update(exit_code=rc, timed_out=rc is None, seconds=round(time.monotonic() - h.pop("t0"), 2),
                 stage=self.stage)
        self.commands.append(h)
        return h

    def run(self, argv: list[str], name: str, cap: float | None = None, env: dict | None = None) -> dict:
        """Run a command to its end; StageError unless it exits 0."""
        h = self.finish(self.start(argv, name, env), cap)
        if h["exit_code"] != 0:
            raise StageError(command_error(h))
        return h

    def flags(self, key: str) -> list[str]:
        return shlex.split(FLAGS[self.mode][key])

    def dataset(self, name: str, fallback: bool) -> Path:
        """data/<name> when prepared, else prepared into WORK/data/<name> by data/<name>/prepare.py; with
        `fallback`, if that fails (no Shakespeare package), the repository's Python source as GPT-2 BPE."""
        if name in self.datasets:
            return Path(self.datasets[name]["path"])
        found = ROOT / "data" / name
        if (found / "meta.json").is_file():
            self.datasets[name] = {"path": str(found), "how": "found in data/"}
            return found
        out = self.work / "data" / name
        try:
            if not (out / "meta.json").is_file():
                self.run([PY, f"data/{name}/prepare.py", "--out_dir", str(out)], f"prepare_{name}", cap=120)
            self.datasets[name] = {"path": str(out), "how": f"data/{name}/prepare.py"}
        except StageError as e:
            if not fallback:
                raise StageError(f"data set {name} could not be prepared: {e}") from None
            out = self.work / "data" / "repo_source"
            if not (out / "meta.json").is_file():
                self.run([PY, "data/prepare.py", "--input", "variations", "benchmarks", "analysis", "tests", "--glob",
                          "*.py", "--tokenizer", "tiktoken", "--out_dir", str(out)], "prepare_repo_source", cap=120)
            self.datasets[name] = {"path": str(out), "how": f"fallback, {name} unavailable ({e}): the repository's "
                                                            "Python source as GPT-2 BPE (same vocabulary, same speed)"}
        return Path(self.datasets[name]["path"])


def command_error(h: dict) -> str:
    tail = "\n".join(Path(h["log"]).read_text(errors="replace").splitlines()[-15:])
    what = f"timed out after {h['seconds']:.0f} s" if h["timed_out"] else f"exit {h['exit_code']}"
    return f"{Path(h['log']).stem}: {what} (log {h['log']})\n{tail}"


def script_json(suite: Suite, script: str, flags: list[str], name: str) -> dict:
    """Run benchmarks/<script>.py with flags and --json WORK/<name>.json; its result."""
    out = suite.work / f"{name}.json"
    out.unlink(missing_ok=True)
    suite.run([PY, f"benchmarks/{script}.py", *flags, "--json", str(out)], name)
    return json.loads(out.read_text())


# ------------------------------------------------------------------------------------ stages
def stage_pytest(suite: Suite) -> dict:
    smoke = suite.mode == "cpu_smoke"
    files, select = (TEST_FILES[:1], ["-k", SMOKE_TESTS]) if smoke else (TEST_FILES, [])
    env = {"PPA_CUDA_TESTS_DEVICE": "cpu" if smoke else "cuda"}
    h = suite.run([PY, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files, *select],
                  "pytest_collect", cap=120, env=env)
    ids = [line.strip() for line in Path(h["log"]).read_text().splitlines() if "::" in line and " " not in line.strip()]
    if not ids:
        raise StageError(f"no tests collected (log {h['log']})")
    workers = max(1, min(suite.args.pytest_workers or (2 if smoke else 8), len(ids)))
    shards = [ids[i::workers] for i in range(workers)]  # round robin: the kernels' compilations spread out
    started = [suite.start([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rfEs",
                            f"--junitxml={suite.work / f'pytest_{i}.xml'}", *shard], f"pytest_{i}", env=env)
               for i, shard in enumerate(shards)]
    done = [suite.finish(s) for s in started]
    result = {"files": files, "selection": select, "workers": workers, "tests": 0, "passed": 0, "failed": 0,
              "skipped": 0, "failures": [], "skip_reasons": {}, "slowest": [],
              "shards": [{k: d[k] for k in ("exit_code", "seconds", "log")} for d in done]}
    cases = []
    for i, d in enumerate(done):
        xml = suite.work / f"pytest_{i}.xml"
        if xml.is_file():
            cases += junit_cases(xml)
    for c in cases:
        result["tests"] += 1
        result[c["outcome"]] += 1
        if c["outcome"] == "failed":
            result["failures"].append({"test": c["test"], "message": c["message"]})
        elif c["outcome"] == "skipped":
            result["skip_reasons"][c["message"]] = result["skip_reasons"].get(c["message"], 0) + 1
    result["slowest"] = [{"test": c["test"], "seconds": c["seconds"]}
                         for c in sorted(cases, key=lambda c: -c["seconds"])[:5]]
    problems = [command_error(d) for d in done if d["exit_code"] not in (0, 1)]  # 1: tests failed, listed
    if result["failed"]:
        problems.insert(0, f"{result['failed']} of {result['tests']} tests failed: "
                           + ", ".join(f["test"] for f in result["failures"][:5]))
    if result["tests"] < len(ids):
        problems.append(f"{len(ids) - result['tests']} of {len(ids)} collected tests have no result (see the logs)")
    cuda_skips = [c for c in cases if c["outcome"] == "skipped" and "test_triton_cuda" in c["test"]]
    if cuda_skips:
        problems.append(f"{len(cuda_skips)} tests of {TEST_FILES[0]} were skipped: {cuda_skips[0]['message']}")
    if problems:
        raise StageError("\n".join(problems), result)
    return result


def junit_cases(path: Path) -> list[dict]:
    """Each test case of a JUnit XML report: test id, outcome (passed, failed, skipped), message, seconds."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        outcome, message = "passed", ""
        for tag, name in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
            node = case.find(tag)
            if node is not None:
                text = (node.get("message") or node.text or "").strip()
                outcome, message = name, text.splitlines()[0][:300] if text else ""
                break
        cases.append({"test": f"{module}.py::{case.get('name')}", "outcome": outcome, "message": message,
                      "seconds": float(case.get("time") or 0)})
    return cases


def stage_softmax(suite: Suite) -> dict:
    return script_json(suite, "bench_softmax", suite.flags("softmax"), "bench_softmax")


def stage_attention(suite: Suite) -> dict:
    return script_json(suite, "bench_attention", suite.flags("attention"), "bench_attention")


def stage_train(suite: Suite) -> dict:
    data = suite.dataset("shakespeare", fallback=True)
    result, errors = {"dataset": suite.datasets["shakespeare"]}, []
    for variant, settings in TRAIN_VARIANTS.items():
        extra = [*suite.flags("train_extra"), "--dataset", str(data), "--softmax_variant_attn", variant,
                 *settings_to_argv(settings)]
        try:
            result[variant] = script_json(suite, "bench_train", [*suite.flags("train"), "--extra", shlex.join(extra)],
                                          f"bench_train_{variant}")
        except StageError as e:
            errors.append(f"{variant}: {e}")
    if errors:
        raise StageError("\n".join(errors), result)
    return result


def stage_decode(suite: Suite) -> dict:
    return script_json(suite, "bench_decode", suite.flags("decode"), "bench_decode")


def stage_repro(suite: Suite) -> dict:
    from optimization_and_search import launch
    data = suite.dataset("shakespeare_char", fallback=False)
    result, errors = {"dataset": suite.datasets["shakespeare_char"], "reference_val_loss": NANOGPT_CHAR_VAL_LOSS}, []
    estimate = ESTIMATE_S["repro"] / 2 if suite.mode == "gpu" else SMOKE_ESTIMATE_S
    for variant, kernel in TRAIN_VARIANTS.items():
        if suite.remaining() < estimate:
            result[variant] = {"skipped": f"needs about {estimate:.0f} s, {suite.remaining():.0f} s of the budget left"}
            continue
        settings = dict(REPRO[suite.mode], **kernel, dataset=str(data), softmax_variant_attn=variant,
                        max_seconds=max(1.0, suite.remaining() - 30))  # stops itself, summary written
        run_dir = suite.work / f"repro_{variant}"
        t0 = time.monotonic()
        handle, timed_out = launch.start(settings, run_dir), False
        try:
            handle.wait(max(1.0, suite.remaining()))
        except subprocess.TimeoutExpired:
            timed_out = True
            handle.stop()
        summary = handle.summary() or {}
        keys = ("status", "stop_reason", "iters", "best_val_loss", "final_val_loss", "final_train_loss",
                "tokens_per_s", "mfu", "iter_time_ms", "wall_time_s", "peak_memory_bytes", "softmax_kernel")
        result[variant] = {**{k: summary.get(k) for k in keys}, "seconds": round(time.monotonic() - t0, 1),
                           "exit_code": handle.exit_code, "run_dir": str(run_dir), "argv": handle.argv}
        suite.commands.append({"argv": [PY, "train.py", *handle.argv], "log": str(handle.log_path), "stage": suite.stage,
                               "exit_code": handle.exit_code, "timed_out": timed_out,
                               "seconds": result[variant]["seconds"]})
        if handle.exit_code != 0 or summary.get("status") != "completed":
            errors.append(f"{variant}: train.py exit {handle.exit_code}, status {summary.get('status')} "
                          f"(log {handle.log_path})\n{handle.log_tail(10)}")
    if errors:
        raise StageError("\n".join(errors), result)
    return result


STAGE_FUNCTIONS = {"pytest": stage_pytest, "softmax": stage_softmax, "attention": stage_attention,
                   "train": stage_train, "decode": stage_decode, "repro": stage_repro}


# ------------------------------------------------------------------------------------ environment
def git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_sha256() -> str:
    """A hash of the repository's Python sources (paths and contents), to match results to a checkout
    where the copy carries no git metadata: hash a checkout the same way and compare."""
    h = hashlib.sha256()
    skip = {".venv", ".git", "__pycache__", "results", "out"}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if not skip & set(rel.parts):
            h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def nvidia_smi() -> dict:
    import re
    try:
        text = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {k: re.search(rf"{k}:\s*([0-9.]+)", text) for k in ("Driver Version", "CUDA Version")}
    return {k.lower().replace(" ", "_"): m.group(1) for k, m in found.items() if m}


def environment(argv: list[str] | None) -> dict:
    import torch

    from benchmarks.bench_train import cpu_model
    from variations.kernels import triton_version
    commit = git("rev-parse", "HEAD")
    env = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": shlex.join(["python", "benchmarks/gpu_suite.py", *(sys.argv[1:] if argv is None else argv)]),
           "git_commit": commit, "git_dirty": None if commit is None else bool(git("status", "--porcelain")),
           "source_sha256": source_sha256(), "python": platform.python_version(), "platform": platform.platform(),
           "torch": torch.__version__, "torch_cuda": torch.version.cuda, "triton": triton_version(),
           "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "cuda_available": torch.cuda.is_available(),
           "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu_name=props.name, gpu_count=torch.cuda.device_count(), gpu_memory_bytes=props.total_memory,
                   gpu_capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(), **nvidia_smi())
    return env


# ------------------------------------------------------------------------------------ main
def run_stage(suite: Suite, name: str) -> dict:
    suite.begin(name)
    t0 = time.monotonic()
    rec = {"title": report.TITLES[name], "status": "ok", "reason": None, "seconds": 0.0, "result": {}}
    estimate = ESTIMATE_S[name] if suite.mode == "gpu" else SMOKE_ESTIMATE_S
    if name == "repro" and suite.mode == "gpu":
        estimate /= 2  # one variant fits: it runs, the other is skipped inside if need be
    if name not in suite.args.stages:
        rec.update(status="skipped", reason="not in --stages")
    elif name == "repro" and suite.args.skip_repro:
        rec.update(status="skipped", reason="--skip_repro")
    elif suite.remaining() < estimate:
        rec.update(status="skipped", reason=f"needs about {estimate:.0f} s; {max(0, suite.remaining()):.0f} s of "
                                            f"--budget_s {suite.args.budget_s:g} left")
    else:
        print(f"gpu_suite: {name} ({suite.remaining():.0f} s of the budget left) ...", file=sys.stderr, flush=True)
        try:
            rec["result"] = STAGE_FUNCTIONS[name](suite)
            if name in suite.args.fail_stage:  # the stage ran; then a command of it fails
                suite.run([PY, "-c", f"raise SystemExit('--fail_stage {name}: failing on purpose')"], f"{name}_fail")
        except StageError as e:
            rec.update(status="failed", reason=str(e), result=e.result or rec["result"])
        except Exception as e:  # the driver's own bug in one stage must not cost the others
            rec.update(status="failed", reason=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    rec["seconds"] = round(time.monotonic() - t0, 2)
    print(f"gpu_suite: {name} {rec['status']} in {rec['seconds']:.1f} s"
          + (f": {rec['reason'].splitlines()[0]}" if rec["reason"] else ""), file=sys.stderr, flush=True)
    return rec


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    for name in [*args.stages, *args.fail_stage]:
        if name not in STAGES:
            raise UserError(unknown_name_message("stage", name, STAGES))
    if args.budget_s <= 0:
        raise UserError("--budget_s must be positive")
    mode = "cpu_smoke" if args.cpu_smoke else "gpu"
    saved = os.environ.get("TRITON_INTERPRET")
    if mode == "gpu":  # natively compiled kernels; the interpreter would measure nothing
        import torch
        if not torch.cuda.is_available():
            raise UserError("no CUDA device here: run on a GPU machine, or --cpu_smoke to check the suite on CPU")
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = "1"  # for the subprocesses: the kernels in Triton's interpreter
    try:
        device = "cuda" if mode == "gpu" else "cpu"
        args.json = args.json or ROOT / "benchmarks" / "results" / f"gpu_suite_{device}.json"
        args.md = args.md or args.json.with_suffix(".md")
        args.work_dir = args.work_dir or args.json.with_suffix("")
        args.work_dir.mkdir(parents=True, exist_ok=True)
        suite = Suite(args, mode)
        t0 = time.monotonic()
        try:
            env = environment(argv)
        except Exception as e:  # a figure short is better than no run
            env = {"error": f"{type(e).__name__}: {e}", "date": dt.datetime.now().astimezone().isoformat()}
        result = {"suite": "gpu_suite", "mode": mode, "environment": env,
                  "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "stages": {}}
        for name in STAGES:
            result["stages"][name] = run_stage(suite, name)
            write(result, suite, args, t0)  # after every stage: a killed run keeps what it measured
        write(result, suite, args, t0)
        print(Path(args.md).read_text())
        return result
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved


def write(result: dict, suite: Suite, args, t0: float):
    from benchmarks.kernel_timing import write_json
    result.update(datasets=suite.datasets, commands=suite.commands, wall_s=round(time.monotonic() - t0, 1),
                  failed=[n for n, r in result["stages"].items() if r["status"] == "failed"])
    try:
        result["targets"] = report.targets(result["stages"])
    except Exception as e:  # an unexpected result shape must not lose the figures
        result["targets"] = [report.target("error", "", "the targets could not be read", f"{type(e).__name__}: {e}",
                                           None)]
    write_json(args.json, result)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(report.markdown(result, str(args.json)))


def cli(argv: list[str] | None = None) -> int:
    out = {}
    code = run_cli(lambda a: out.update(result=main(a)), argv)
    return code or (1 if out["result"]["failed"] else 0)


if __name__ == "__main__":
    sys.exit(cli())
