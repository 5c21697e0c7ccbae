"""Results into comparisons, tables and plots.

`python -m bench.report FILE.json ...` prints a Markdown table per result file
(and plots it into bench/out/img/); `python -m bench.report --compare SUMMARY.json`
plots the peers side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Plots go beside the results; copy the ones docs/benchmarks.md shows into docs/img/.
IMG = ROOT / "bench" / "out" / "img"
LABELS = {
    "chat": "our server",
    "pysio": "python-socketio",
    "node": "Node socket.io",
    "raw": "raw websockets",
}


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_absolute():
        p = ROOT / p
    return dict(json.loads(p.read_text()))


def _med(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _step_at_rate(result: dict[str, Any], rate: float) -> dict[str, Any] | None:
    for s in result.get("steps", []):
        if s["rate"] == rate:
            return dict(s)
    return None


def _by_rate(rs: list[dict[str, Any]], p99_ms: float = 250) -> dict[str, Any]:
    rates = sorted({s["rate"] for r in rs for s in r.get("steps", [])})
    out: dict[str, Any] = {}
    for rate in rates:
        steps = [s for r in rs if (s := _step_at_rate(r, rate)) is not None]
        ok = [
            s
            for s in steps
            if s["latency"].get("p99_ms", 1e9) <= p99_ms and s["outstanding_after_drain"] == 0
        ]
        out[f"{rate:g}"] = {
            "runs": len(steps),
            # the runs whose step at this rate stayed under the p99 limit
            "ok_runs": len(ok),
            "deliveries_per_cpu_s_ok": _med([s.get("deliveries_per_cpu_s") for s in ok]),
            "p99_ms": _med([s["latency"].get("p99_ms") for s in steps]),
            "deliveries_per_s": _med([s["deliveries"] / s["seconds"] for s in steps]),
            "deliveries_per_cpu_s": _med([s.get("deliveries_per_cpu_s") for s in steps]),
            "server_cpu_pct": _med([s.get("server_cpu_pct") for s in steps]),
            "others_cpu_pct": _med([s.get("others_cpu_pct") for s in steps]),
        }
    return out


def compare(runs: dict[str, list[str]], p99_ms: float = 250) -> dict[str, Any]:
    """Medians over the runs of each target, and our server's ratios to the peers.

    - max deliveries/s: the best step with delivery p99 <= p99_ms and nothing outstanding;
    - deliveries per server CPU-second: at that best step, and at the highest rate
      that every run of every target reached (the same offered load for all);
    - per rate: the median p99 and deliveries per CPU-second of each target.
    """
    results = {t: [load(p) for p in paths] for t, paths in runs.items()}
    # CPU efficiency barely depends on latency: compare it at the highest rate that every
    # run of every target got to (whatever its p99), the same offered load for all.
    reached = [{s["rate"] for s in r.get("steps", [])} for rs in results.values() for r in rs]
    common = max(set.intersection(*reached), default=None) if reached else None
    table: dict[str, Any] = {}
    for t, rs in results.items():
        # A run with no step under the limit counts as 0 deliveries/s, not as missing.
        best = [r.get("best") or {"deliveries_per_s": 0} for r in rs]
        at_common = [_step_at_rate(r, common) if common is not None else None for r in rs]
        table[t] = {
            "runs": len(rs),
            "max_deliveries_per_s": _med([b.get("deliveries_per_s") for b in best]),
            "p99_ms_at_max": _med([b.get("p99_ms") for b in best]),
            "deliveries_per_cpu_s_at_max": _med([b.get("deliveries_per_cpu_s") for b in best]),
            "each_run_max_deliveries_per_s": [b.get("deliveries_per_s") for b in best],
            "common_rate": common,
            "deliveries_per_cpu_s_at_common_rate": _med(
                [s.get("deliveries_per_cpu_s") if s else None for s in at_common]
            ),
            "p99_ms_at_common_rate": _med(
                [s["latency"].get("p99_ms") if s else None for s in at_common]
            ),
            "server_cpu_pct_at_common_rate": _med(
                [s.get("server_cpu_pct") if s else None for s in at_common]
            ),
            "by_rate": _by_rate(rs, p99_ms),
        }
    ratios: dict[str, Any] = {}
    ours = table.get("chat")
    if ours:
        for t in ("pysio", "node", "raw"):
            other = table.get(t)
            if not other:
                continue
            a, b = ours.get("max_deliveries_per_s"), other.get("max_deliveries_per_s")
            if a and b:
                ratios[f"chat/{t} max deliveries/s at p99 <= {p99_ms:g} ms"] = round(a / b, 2)

            # Efficiency at the same offered load: the highest rate at which at least two
            # runs of each stayed under the p99 limit (median over those runs).
            def rates(t: str) -> set[str]:
                return {k for k, v in table[t]["by_rate"].items() if v["ok_runs"] >= 2}

            pair = max(rates("chat") & rates(t), key=float, default=None)
            if pair is not None:
                a = ours["by_rate"][pair]["deliveries_per_cpu_s_ok"]
                b = other["by_rate"][pair]["deliveries_per_cpu_s_ok"]
                if a and b:
                    ratios[f"chat/{t} deliveries per CPU-s at {pair} msg/s"] = round(a / b, 2)
    return {"p99_limit_ms": p99_ms, "targets": table, "ratios": ratios}


# -- plots ------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(path: Path, out: Path | None = None) -> Path | None:
    """Latency percentiles against achieved deliveries/s, one point per step."""
    r = load(path)
    steps = [s for s in r.get("steps", []) if s["latency"].get("count")]
    if not steps:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    x = [s["deliveries"] / s["seconds"] for s in steps]
    for key, label, style in (
        ("p50_ms", "p50", "o-"),
        ("p99_ms", "p99", "s-"),
        ("p99_9_ms", "p99.9", "^-"),
    ):
        ax.plot(x, [s["latency"][key] for s in steps], style, label=f"delivery {label}")
    if any(s["ack_latency"].get("count") for s in steps) and r["scenario"] == "S4":
        ax.plot(x, [s["ack_latency"].get("p99_ms") for s in steps], "d--", label="send-ack p99")
    ax.set_yscale("log")
    ax.set_xlabel(
        "persisted messages per second (each delivered once)"
        if r["scenario"] == "S4"
        else "deliveries per second (achieved)"
    )
    ax.set_ylabel("latency, ms (log)")
    cfg = r["config"]
    ax.set_title(
        f"{r['scenario']} {LABELS.get(r['target'], r['target'])}: "
        f"{cfg['rooms']} room(s) x {cfg['members']}"
        + (f", {cfg['slow_fraction']:.0%} slow" if cfg.get("slow_fraction") else "")
    )
    for limit in (50, 250) if r["scenario"] in ("S1", "S2", "S3") else (20,):
        ax.axhline(limit, color="grey", lw=0.8, ls=":")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    out = out or IMG / f"{r['scenario'].lower()}-{r['target']}.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_compare(runs: dict[str, list[str]], out: Path | None = None) -> Path:
    """Delivery p99 against achieved deliveries/s, every target, every run."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    markers = {"chat": "o", "pysio": "s", "node": "^", "raw": "d"}
    for t, paths in runs.items():
        for i, p in enumerate(paths):
            r = load(p)
            steps = [s for s in r.get("steps", []) if s["latency"].get("count")]
            x = [s["deliveries"] / s["seconds"] for s in steps]
            label = LABELS.get(t, t) if i == 0 else None
            color = {"chat": "C0", "pysio": "C1", "node": "C2", "raw": "C3"}.get(t)
            axes[0].plot(
                x,
                [s["latency"]["p99_ms"] for s in steps],
                marker=markers.get(t, "o"),
                color=color,
                alpha=0.8,
                label=label,
            )
            axes[1].plot(
                x,
                [s.get("deliveries_per_cpu_s") for s in steps],
                marker=markers.get(t, "o"),
                color=color,
                alpha=0.8,
                label=label,
            )
    axes[0].set_yscale("log")
    axes[0].axhline(250, color="grey", lw=0.8, ls=":")
    axes[0].set_xlabel("deliveries per second (achieved)")
    axes[0].set_ylabel("delivery p99, ms (log)")
    axes[0].set_title("Hot room, 1,000 members on 2 processes")
    axes[1].set_xlabel("deliveries per second (achieved)")
    axes[1].set_ylabel("deliveries per server CPU-second")
    axes[1].set_title("Efficiency")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    out = out or IMG / "peers-hot-room.png"
    fig.savefig(out)
    plt.close(fig)
    return out


# -- tables -----------------------------------------------------------------------


def table(r: dict[str, Any]) -> str:
    lines = []
    if r["scenario"] == "S0":
        m = r["memory"]
        lines.append("| connections | server RSS (MiB, a + b) | KiB per connection over baseline |")
        lines.append("|---:|---:|---:|")
        base = m["points"][0]["total_kib"]
        for p in m["points"]:
            per = (p["total_kib"] - base) / p["connections"] if p["connections"] else 0
            rss = " + ".join(f"{x / 1024:.0f}" for x in p["server_rss_kib"])
            lines.append(f"| {p['connections']:,} | {rss} | {per:.1f} |")
        lines.append(
            f"\nslope between the first and the last level: "
            f"{m['kib_per_connection_slope']} KiB per connection"
        )
        return "\n".join(lines)
    lines.append(
        "| msg/s | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms "
        "| ack p99 ms | server CPU % | PG CPU % | deliveries/CPU-s | generator CPU % "
        "| others' CPU % | outstanding |"
    )
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in r.get("steps", []):
        lat, ack = s["latency"], s["ack_latency"]
        lines.append(
            f"| {s['rate']:g} | {s['deliveries'] / s['seconds']:,.0f} | {lat.get('p50_ms', '-')} "
            f"| {lat.get('p99_ms', '-')} | {lat.get('p99_9_ms', '-')} | {lat.get('max_ms', '-')} "
            f"| {ack.get('p99_ms', '-')} | {s['server_cpu_pct']} "
            f"| {s.get('postgres_cpu_pct', '-') if r['target'] == 'chat' else '-'} "
            f"| {s.get('deliveries_per_cpu_s', '-'):,} | {s['generator_cpu_pct']} "
            f"| {s.get('others_cpu_pct', '-')} | {s['outstanding_after_drain']} |"
        )
    i = r.get("integrity")
    if i:
        lines.append(
            f"\nintegrity: {i['connections_checked']} connections, lost {i['lost']}, repeated "
            f"{i['repeated']}, out of order {i['out_of_order']}, closed {i['closed_unexpectedly']}"
            + (
                f"; database: {i['database']['messages_stored']} stored of "
                f"{i['database']['messages_acked']} sent, ok={i['database']['ok']}"
                if "database" in i
                else ""
            )
            + (
                f"; slow consumers closed {i['slow_consumers_closed']}/{i['slow_consumers']} "
                f"{i['slow_close_codes']}"
                if i.get("slow_consumers")
                else ""
            )
        )
    return "\n".join(lines)


def latest(scenario: str, target: str = "chat") -> Path | None:
    """The newest result file of a scenario and target."""
    files = sorted((ROOT / "bench" / "out").glob(f"{scenario}-{target}-*-r*.json"))
    return files[-1] if files else None


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.report")
    p.add_argument("files", nargs="*")
    p.add_argument("--latest", action="store_true", help="the newest result of every scenario")
    p.add_argument("--compare", help="a *-summary-*.json from a multi-target run")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args()
    if args.latest:
        found = [latest(sc, t) for sc in ("S0", "S1", "S2", "S3", "S4") for t in ("chat", "raw")]
        args.files += [str(f) for f in found if f is not None]
    for f in args.files:
        r = load(f)
        print(f"### {r['scenario']} {r['target']} ({f})\n")
        print(table(r))
        print()
        if not args.no_plot and r.get("steps"):
            print(f"plot: {plot_run(Path(f))}")
    if args.compare:
        s = load(args.compare)
        s["comparison"] = compare(s["runs"])
        path = Path(args.compare) if Path(args.compare).is_absolute() else ROOT / args.compare
        path.write_text(json.dumps(s, indent=1))
        print(json.dumps(s["comparison"]["ratios"], indent=1))
        if not args.no_plot:
            print(f"plot: {plot_compare(s['runs'])}")


if __name__ == "__main__":
    main()
