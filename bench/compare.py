#!/usr/bin/env python3
"""Two full herald-bench runs side by side: the medians of each point in an
older and a newer `summary.json`, and whether a point where Herald was ahead
of its peer has fallen behind.

    python3 bench/compare.py OLD/summary.json NEW/summary.json

Prints a Markdown table (BENCHMARKS.md keeps it next to the newer run's
tables). "Ahead" means a ratio above 1 for a rate and below 1 for a p99
(W3, W5). Exits with 1 when a point that was ahead is behind now.
"""
import json
import sys


def load(path: str) -> dict:
    with open(path) as file:
        return {point["point"]: point for point in json.load(file)["points"]}


def figure(figures: dict, latency: bool):
    if not figures:
        return None
    return figures.get("p99_us_median" if latency else "throughput_median")


def fmt(value) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def ratio(value) -> str:
    return "—" if value is None else f"{value:.2f}×"


def main() -> int:
    old, new = load(sys.argv[1]), load(sys.argv[2])
    print("| point | unit | peer: old → new | Herald: old → new | ratio: old → new | |")
    print("|---|---|---|---|---|---|")
    fallen = []
    for name, point in new.items():
        latency = point["headline"] != "throughput"
        unit = "p99 µs" if latency else ("appends/s" if point["peer"] == "postgres" else "events/s")
        before = old.get(name)
        old_ratio = before and before.get("ratio_median")
        new_ratio = point.get("ratio_median")

        def ahead(value):
            return value is not None and (value < 1 if latency else value > 1)

        verdict = ""
        if ahead(old_ratio) and not ahead(new_ratio):
            verdict = "**fell behind**"
            fallen.append(name)
        elif ahead(new_ratio) and not ahead(old_ratio) and before:
            verdict = "now ahead"
        old_peer = figure(before and before.get("peer_figures"), latency)
        old_herald = figure(before and before.get("herald_figures"), latency)
        print(
            f"| {name} | {unit} "
            f"| {point['peer']} {fmt(old_peer)} → {fmt(figure(point.get('peer_figures'), latency))} "
            f"| {fmt(old_herald)} → {fmt(figure(point.get('herald_figures'), latency))} "
            f"| {ratio(old_ratio)} → {ratio(new_ratio)} | {verdict} |"
        )
    if fallen:
        print(f"\nAhead before, behind now: {', '.join(fallen)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
