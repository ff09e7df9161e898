"""Run every experiment (experiments/eNN_*.py) and write an index page linking the results.

``python -m experiments.demo [--out DIR] [--quick] [--only e01,e05]`` runs each experiment's
``run(out, quick)``, catches and reports failures (exit status 1 if any failed; 2 with one
line naming the package and its install command when the only failures are missing
packages), and writes ``DIR/index.md`` with each experiment's headline numbers, run time,
figures and tables. PyTorch is optional: without it the PyTorch comparisons of e02, e10
and e12 read "not installed" and the experiments pass.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from experiments._common import DEFAULT_OUT
from jaxgd.cli import missing_dependency

HERE = Path(__file__).resolve().parent
PATTERN = re.compile(r"^(e\d\d)_\w+\.py$")


def discover(only: list[str] | None = None) -> list[str]:
    """Module names ``experiments.eNN_name`` in order; ``only`` filters by prefix or name."""
    names = sorted(p.stem for p in HERE.glob("e[0-9][0-9]_*.py") if PATTERN.match(p.name))
    if only:
        names = [n for n in names if any(n == o or n.startswith(o + "_") or n == o.strip()
                                         for o in only)]
    return [f"experiments.{n}" for n in names]


def _snapshot(out: Path) -> dict[Path, float]:
    if not out.exists():
        return {}
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def run_one(module: str, out: Path, quick: bool) -> dict[str, Any]:
    """Import and run one experiment; returns a record (never raises)."""
    rec: dict[str, Any] = {"module": module, "name": module.split(".")[-1], "ok": False,
                           "headline": {}, "files": [], "seconds": 0.0, "error": None,
                           "title": ""}
    before = _snapshot(out)
    t = time.perf_counter()
    try:
        mod = importlib.import_module(module)
        rec["title"] = (mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else ""
        rec["headline"] = mod.run(out, quick) or {}
        rec["ok"] = True
    except Exception as e:  # noqa: BLE001 - report and go on with the next experiment
        rec["error"] = f"{type(e).__name__}: {e}"
        rec["traceback"] = traceback.format_exc()
        rec["missing"] = missing_dependency(e) if isinstance(e, ImportError) else None
    rec["seconds"] = time.perf_counter() - t
    after = _snapshot(out)
    rec["files"] = sorted(p for p, m in after.items() if before.get(p) != m)
    return rec


def write_index(records: list[dict[str, Any]], out: Path, quick: bool) -> Path:
    lines = ["# jaxgd experiments", "",
             f"{sum(r['ok'] for r in records)}/{len(records)} experiments passed"
             + (" (quick mode)" if quick else "") + ".", "",
             "| experiment | status | time (s) | headline |", "|---|---|---|---|"]
    for r in records:
        status = "ok" if r["ok"] else "**FAILED**"
        head = _fmt(r["headline"]).replace("|", "\\|") if r["ok"] else r["error"]
        lines.append(f"| [{r['name']}](#{r['name']}) | {status} | {r['seconds']:.1f} | "
                     f"{head.replace(chr(10), ' ')} |")
    for r in records:
        lines += ["", f"## {r['name']}", "", r["title"], "",
                  f"Status: {'ok' if r['ok'] else 'FAILED'}, {r['seconds']:.1f} s.", ""]
        if not r["ok"]:
            lines += ["```", (r.get("traceback") or r["error"]).rstrip(), "```", ""]
        for k, v in r["headline"].items():
            lines.append(f"- **{k}**: {_fmt(v)}")
        rel = [p.relative_to(out).as_posix() for p in r["files"]]
        figs = [p for p in rel if p.endswith(".png")]
        tables = [p for p in rel if p.endswith((".md", ".csv"))]
        if tables:
            lines += ["", "Tables: " + ", ".join(f"[{p}]({p})" for p in tables)]
        for p in figs:
            lines += ["", f"![{p}]({p})"]
    path = out / "index.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"output folder (default: {DEFAULT_OUT})")
    ap.add_argument("--quick", action="store_true", help="reduced sizes (CI)")
    ap.add_argument("--only", default=None,
                    help="comma-separated experiment prefixes or names, e.g. e01,e05")
    a = ap.parse_args(argv)
    only = [s.strip() for s in a.only.split(",")] if a.only else None
    modules = discover(only)
    if not modules:
        print("no experiments found", file=sys.stderr)
        return 1
    a.out.mkdir(parents=True, exist_ok=True)
    records = []
    t0 = time.perf_counter()
    for i, m in enumerate(modules, 1):
        print(f"[{i}/{len(modules)}] {m} ...", flush=True)
        rec = run_one(m, a.out, a.quick)
        records.append(rec)
        status = "ok" if rec["ok"] else f"FAILED ({rec['error']})"
        print(f"[{i}/{len(modules)}] {m}: {status} in {rec['seconds']:.1f} s, "
              f"{len(rec['files'])} files", flush=True)
    index = write_index(records, a.out, a.quick)
    summary = [{k: r[k] for k in ("name", "ok", "seconds", "error")} for r in records]
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    failed = [r["name"] for r in records if not r["ok"]]
    print(f"{len(records) - len(failed)}/{len(records)} ok in {time.perf_counter() - t0:.0f} s;"
          f" index: {index}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    missing = [r for r in records if not r["ok"] and r.get("missing")]
    if missing and len(missing) == len(failed):  # only missing packages: a user error
        what = "; ".join(dict.fromkeys(r["missing"] for r in missing))
        names = ", ".join(r["name"] for r in missing)
        print(f"{(prog or 'demo').split()[0]}: error: {names} not run: {what}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
