"""Static review throughput and false-positive rate on real PyTorch code nobody here wrote.

Corpus: the installed torch package's ``torch/nn/modules`` and ``torch/distributions``.

    .venv/bin/python bench/bench_static.py [--torchfix] [--json OUT]

Reports, for the production standard: lines/s (one process, one core, CLI wall time including
start-up), findings at or above high per 1,000 lines (a false-positive budget: this is
well-reviewed library code), and, with ``--torchfix``, the same wall-clock measure for TorchFix run
in its own virtual environment (``bench/.torchfix-venv``, created on first use; TorchFix pins an
older libcst) with all its rules selected, and the throughput ratio and rule counts side by side.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def corpus():
    import torch

    base = Path(torch.__file__).parent
    files = sorted((base / "nn" / "modules").glob("*.py")) + sorted((base / "distributions").glob("*.py"))
    lines = sum(len(f.read_text(encoding="utf-8").splitlines()) for f in files)
    return files, lines


def run_ours(files, lines):
    from torchreview_lab.engine import review_path
    from torchreview_lab.rules import all_rules

    high = []
    t0 = time.perf_counter()
    for f in files:
        for x in review_path(f, "production").findings:
            if x.severity in ("high", "critical"):
                high.append(f"{Path(x.path).relative_to(Path(files[0]).parents[2])}:{x.line} {x.rule} {x.title}")
    in_process = time.perf_counter() - t0
    cli = [sys.executable, "-m", "torchreview_lab.cli", "review", "--standard", "production", "--format", "json",
           *map(str, files)]
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(cli, stdout=subprocess.DEVNULL, check=False)
        walls.append(time.perf_counter() - t0)
    return {
        "rules": len(all_rules()),
        "in_process_seconds": round(in_process, 3),
        "in_process_lines_per_s": round(lines / in_process),
        "cli_seconds": round(statistics.median(walls), 3),
        "cli_lines_per_s": round(lines / statistics.median(walls)),
        "high_or_critical": len(high),
        "high_per_1000_lines": round(1000 * len(high) / lines, 3),
        "high_findings": high,
    }


def torchfix_env() -> Path:
    venv = HERE / ".torchfix-venv"
    exe = venv / "bin" / "torchfix"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "torchfix"], check=True)
    return venv


def run_torchfix(files, lines):
    venv = torchfix_env()
    codes = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import torchfix.torchfix as t; print(len(t.GET_ALL_ERROR_CODES()))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    cmd = [str(venv / "bin" / "torchfix"), "--select", "ALL", "-j", "1", *map(str, files)]
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        walls.append(time.perf_counter() - t0)
    version = subprocess.run([str(venv / "bin" / "torchfix"), "--version"], capture_output=True, text=True).stdout.strip()
    return {"version": version, "rules": int(codes), "cli_seconds": round(statistics.median(walls), 3),
            "cli_lines_per_s": round(lines / statistics.median(walls))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torchfix", action="store_true", help="also run TorchFix in its own venv")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    files, lines = corpus()
    out = {"corpus": {"files": len(files), "lines": lines}, "torchreview": run_ours(files, lines)}
    if args.torchfix:
        out["torchfix"] = run_torchfix(files, lines)
        ours, theirs = out["torchreview"], out["torchfix"]
        out["throughput_ratio"] = round(ours["cli_lines_per_s"] / theirs["cli_lines_per_s"], 2)
        out["rule_ratio"] = round(ours["rules"] / theirs["rules"], 2)
    shown = {k: v for k, v in out.items()}
    shown["torchreview"] = {k: v for k, v in out["torchreview"].items() if k != "high_findings"}
    print(json.dumps(shown, indent=2))
    for h in out["torchreview"]["high_findings"]:
        print("  high+:", h)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
