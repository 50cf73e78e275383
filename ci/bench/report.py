#!/usr/bin/env python3
"""Writes docs/benchmarks/README.md and its charts (SVG) from one `make bench` run: the
tables each benchmark printed, and charts drawn from their JSON. With `--check`, only checks
that the template can be filled."""

import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DOCS = os.path.join(ROOT, "docs", "benchmarks")


def bars(path, title, rows, unit, width=640):
    """A horizontal bar chart: `rows` of (label, value)."""
    height = 40 + 28 * len(rows)
    top = max(v for _, v in rows) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<text x="10" y="20" font-size="14" font-weight="bold">{title}</text>']
    for i, (label, value) in enumerate(rows):
        y = 36 + 28 * i
        length = (width - 330) * value / top
        parts.append(f'<text x="10" y="{y + 14}">{label}</text>')
        parts.append(f'<rect x="240" y="{y}" width="{length:.1f}" height="18" fill="#4a7ab7"/>')
        parts.append(f'<text x="{245 + length:.1f}" y="{y + 14}">{value:,.1f} {unit}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def histogram(path, title, samples, unit, buckets=20, width=640, height=240):
    low, high = min(samples), max(samples)
    step = (high - low) / buckets or 1
    counts = [0] * buckets
    for s in samples:
        counts[min(buckets - 1, int((s - low) / step))] += 1
    top = max(counts)
    bar = (width - 60) / buckets
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<text x="10" y="20" font-size="14" font-weight="bold">{title}</text>']
    for i, count in enumerate(counts):
        h = (height - 80) * count / top
        x = 40 + i * bar
        parts.append(f'<rect x="{x:.1f}" y="{height - 40 - h:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" fill="#4a7ab7"/>')
    parts.append(f'<text x="40" y="{height - 20}">{low:.2f} {unit}</text>')
    parts.append(f'<text x="{width - 120}" y="{height - 20}">{high:.2f} {unit}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def read(name):
    with open(os.path.join(DOCS, name)) as f:
        return f.read()


SECTIONS = ("micro", "http", "heavy", "callout", "density", "density_real", "deadline")


def fill(sections, machine):
    """TEMPLATE.md with the run's tables in place (a literal brace there is written doubled)."""
    return read("TEMPLATE.md").format(date=time.strftime("%Y-%m-%d"), machine=machine, **sections)


def main():
    if sys.argv[1] == "--check":
        # Before the benchmarks run: a template that cannot be filled fails now, not after them.
        fill({name: "" for name in SECTIONS}, "")
        return
    work = sys.argv[1]
    http = json.load(open(os.path.join(work, "http.json")))
    density = json.load(open(os.path.join(work, "density.json")))
    deadline = json.load(open(os.path.join(work, "deadline.json")))
    bars(os.path.join(DOCS, "throughput.svg"), "Requests per second, one worker (higher is better)",
         [(name, row["rps"]) for name, row in http.items()], "req/s")
    bars(os.path.join(DOCS, "start-up.svg"), "nginx start with N modules: cold vs compiled-code cache (s)",
         [(f"{r['modules']} modules, {kind}", r[key]) for r in density
          for kind, key in (("cold", "start_cold_s"), ("cached", "start_cached_s"))], "s")
    bars(os.path.join(DOCS, "worker-rss.svg"), "nginx worker RSS with N idle modules (MiB)",
         [(f"{r['modules']} modules", r["worker_rss_kib"] / 1024) for r in density], "MiB")
    for name, result in deadline.items():
        slug = "nginx" if name.startswith("nginx") else "envoy"
        histogram(os.path.join(DOCS, f"deadline-{slug}.svg"), f"{name}: time from the limit to the 503",
                  result["late_ms"], "ms")
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    machine = f"{cpu or platform.processor()}, {os.cpu_count()} CPUs, Linux {platform.release()}"
    sections = {name: open(os.path.join(work, f"{name}.md")).read().strip() for name in SECTIONS}
    text = fill(sections, machine)
    with open(os.path.join(DOCS, "README.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
