"""corral's benchmarks: ``python -m bench.run [--quick] [--only NAME,...] [--out PATH]``.

Runs each group of metrics, prints a table with the bound each metric is compared with
(measured in the same run) and PASS/MISS against the targets, and writes a JSON report.
Speed is never asserted: the exit status is 0 unless a benchmark itself crashed.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from bench import (
    api_bench,
    cli_bench,
    deepq,
    latency_bench,
    list_bench,
    memory,
    metrics_bench,
    pg_bench,
    process_bench,
    ray_bench,
    store_bench,
)
from bench.common import REPO, GroupSkipped, Metric, machine_info, remove_fresh_dirs

GroupRun = Callable[[bool, set[str]], dict[str, Metric]]
GROUPS: list[tuple[str, GroupRun, tuple[str, ...]]] = [
    ("http", api_bench.run, ("create_rps", "get_rps")),
    ("store", store_bench.run, ("transition_ps",)),
    ("e2e", process_bench.run, ("e2e_ps",)),
    ("latency", latency_bench.run,
     ("start_latency_p50_ms", "start_latency_p99_ms", "kill_latency_p99_ms")),
    ("list", list_bench.run, ("list_p99_ms",)),
    ("deepq", deepq.run, ("deepq_get_p99_ms",)),
    ("metrics", metrics_bench.run, ("metrics_scrape_ms",)),
    ("memory", memory.run, ("rss_idle_mb", "rss_busy_mb")),
    ("cli", cli_bench.run, ("cli_call_ms",)),
    ("ray", ray_bench.run,
     ("ray_e2e_ps", "ray_start_latency_p50_ms", "ray_start_latency_p99_ms",
      "ray_mb_per_workload", "ray_node_mb")),
    ("postgres", pg_bench.run, pg_bench.NAMES),
]  # fmt: skip
NAMES = [name for _, _, names in GROUPS for name in names]
SQLITE_TWINS = {
    "pg_create_rps": "create_rps",
    "pg_transition_ps": "transition_ps",
    "pg_e2e_ps": "e2e_ps",
    "pg_list_p99_ms": "list_p99_ms",
    "pg_metrics_scrape_ms": "metrics_scrape_ms",
}
"""Each PostgreSQL metric and the SQLite one measured the same way (shown beside it)."""


@dataclass(frozen=True)
class Target:
    min: float | None = None
    max: float | None = None
    min_ratio: float | None = None

    def text(self, limit_name: str | None) -> str:
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min:g}")
        if self.max is not None:
            parts.append(f"<= {self.max:g}")
        if self.min_ratio is not None:
            parts.append(f">= {self.min_ratio:g} x {limit_name}")
        return " and ".join(parts)

    def met(self, m: Metric) -> bool:
        ok = True
        if self.min is not None:
            ok &= m.value >= self.min
        if self.max is not None:
            ok &= m.value <= self.max
        if self.min_ratio is not None:
            ok &= m.ratio is not None and m.ratio >= self.min_ratio
        return ok


TARGETS: dict[str, Target] = {
    "create_rps": Target(min=2500, min_ratio=0.5),
    "transition_ps": Target(min_ratio=0.5),
    "e2e_ps": Target(min=400, min_ratio=0.3),
    "start_latency_p50_ms": Target(max=5),
    "start_latency_p99_ms": Target(max=25),
    "kill_latency_p99_ms": Target(max=50),
    "list_p99_ms": Target(max=20),
    # Issue 13: with 100,000 pending the API's p99 stays within 1.5 x of 10,000's.
    "deepq_get_p99_ms": Target(min_ratio=0.67),
    # Issue 12: a scrape at 10^6 workloads costs no more than twice one at 10^3.
    "metrics_scrape_ms": Target(min_ratio=0.5),
    "rss_idle_mb": Target(max=100),
    "rss_busy_mb": Target(max=250),
    "cli_call_ms": Target(max=80, min_ratio=1 / 6),
    # Issue 10: >= 10 x Ray Jobs' 27/s, >= 90 x its 911 ms p50; ray_node_mb is information.
    "ray_e2e_ps": Target(min=300),
    "ray_start_latency_p50_ms": Target(max=10),
    "ray_mb_per_workload": Target(max=5),
    # Issue 11: create on PostgreSQL; the other pg_ metrics are compared with SQLite's.
    "pg_create_rps": Target(min=2500, min_ratio=0.5),
}
"""The targets, set for full mode on a 2-core machine (applied to quick mode too)."""


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def entry(name: str, m: Metric) -> dict[str, Any]:
    target = TARGETS.get(name)
    return {
        "value": round(m.value, 3),
        "unit": m.unit,
        "limit": None if m.limit is None else round(m.limit, 3),
        "limit_name": m.limit_name,
        "ratio": None if m.ratio is None else round(m.ratio, 3),
        "target": None if target is None else {
            "text": target.text(m.limit_name), "min": target.min, "max": target.max,
            "min_ratio": target.min_ratio,
        },
        "meets_target": None if target is None else target.met(m),
        "errors": m.errors,
        "flagged": m.errors > 0,
        "detail": m.detail,
    }  # fmt: skip


def table(
    metrics: dict[str, dict[str, Any]], failures: dict[str, str], skipped: dict[str, str]
) -> str:
    head = ["metric", "value", "unit", "limit", "limit name", "ratio", "target", "result"]
    rows = [head]
    for name in NAMES:
        e = metrics.get(name)
        if e is None:
            continue
        met = e["meets_target"]
        result = "-" if met is None else "PASS" if met else "MISS"
        if e["flagged"]:
            result += f" ({e['errors']} errors!)"
        target = e["target"]["text"] if e["target"] else "-"
        rows.append([name, _num(e["value"]), e["unit"], _num(e["limit"]), e["limit_name"] or "-",
                     _num(e["ratio"]), target, result])  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for name, twin in SQLITE_TWINS.items():
        e = metrics.get(name)
        sqlite = e and e["detail"].get("sqlite")
        if e and sqlite and sqlite["pg_over_sqlite"] is not None:
            lines.append(
                f"{name}: {_num(e['value'])} {e['unit']} on PostgreSQL, {_num(sqlite['value'])}"
                f" on SQLite ({twin}, this run): {sqlite['pg_over_sqlite']:.2f} x"
            )
    for group, reason in skipped.items():
        lines.append(f"SKIPPED {group}: {reason}")
    for group, error in failures.items():
        lines.append(f"FAILED {group}: {error}")
    return "\n".join(lines)


def add_sqlite_twins(metrics: dict[str, dict[str, Any]]) -> None:
    """Beside each PostgreSQL metric, its SQLite twin measured in the same run."""
    for name, twin in SQLITE_TWINS.items():
        if name in metrics and twin in metrics:
            value = metrics[twin]["value"]
            metrics[name]["detail"]["sqlite"] = {
                "metric": twin,
                "value": value,
                "ratio": metrics[twin]["ratio"],
                "pg_over_sqlite": round(metrics[name]["value"] / value, 3) if value else None,
            }


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwind, so every server and workload is cleaned up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, under a minute")
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(NAMES)}")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "latest.json")
    args = parser.parse_args(argv)
    only = {n.strip() for n in args.only.split(",") if n.strip()} or set(NAMES)
    unknown = only - set(NAMES)
    if unknown:
        parser.error(f"unknown metric(s): {', '.join(sorted(unknown))}")
    signal.signal(signal.SIGTERM, _terminate)
    mode = "quick" if args.quick else "full"
    started = time.monotonic()
    machine = machine_info()
    metrics: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    skipped: dict[str, str] = {}
    try:
        for group, run, names in GROUPS:
            if not only & set(names):
                continue
            t0 = time.monotonic()
            print(f"[{group}] {', '.join(n for n in names if n in only)} ...", file=sys.stderr)
            try:
                for name, m in run(args.quick, only).items():
                    if name in only:
                        metrics[name] = entry(name, m)
            except GroupSkipped as exc:
                skipped[group] = str(exc).splitlines()[0][:300]
            except Exception as exc:
                traceback.print_exc()
                failures[group] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            print(f"[{group}] done in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    finally:
        remove_fresh_dirs()
    add_sqlite_twins(metrics)
    report = {
        "mode": mode,
        "machine": {**machine, "load_average_1m_after": round(os.getloadavg()[0], 2)},
        "seconds": round(time.monotonic() - started, 1),
        "metrics": metrics,
        "failures": failures,
        "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ncorral benchmarks ({mode} mode, {report['seconds']} s; targets are for full mode)")
    print(table(metrics, failures, skipped))
    print(f"\nwrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
