#!/usr/bin/env python3
"""Throughput and latency with one worker: bare nginx; nginx + the one-header filter with
isolation none, stream and filter; bare Envoy; Envoy + a dynamic module that does nothing
(`do_nothing_module.c`: what any dynamic module costs in Envoy); Envoy + the same filter on
its built-in V8 runtime; Envoy + the same filter on this project's module (isolation none
and stream). Then the typical filter (a few
header reads and writes, a property, a removed header: `host/tests/filters/typical`) in
nginx and in Envoy on both runtimes, in the same rounds.

The servers run on CPU 0 (one worker), wrk on CPU 1 (one thread, 32 connections). Every
server is measured in each round, in turn (A B C ... A B C ...). A server's ratio to its bare
server and the microseconds it adds per request are computed within each round, from
measurements seconds apart, and the median over rounds is reported: absolute numbers drift
on shared machines, within a round much less. Each run also counts the server process's CPU
time per request (every thread's, from /proc): throughput swings with whatever else shares
the machine, CPU time per request much less. A round during which the hypervisor gave more
than 3% of the CPUs' time to other machines (steal, from /proc/stat) is measured again.
Prints a markdown table; `--json FILE` also writes the numbers.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from load import wrk  # noqa: E402
from servers import FILTERS, dynamic_module_filter, free_port, inwasm_filter, start_envoys, start_nginx  # noqa: E402

FILTER = os.path.join(FILTERS, "filter_one_header.wasm")
TYPICAL = os.path.join(FILTERS, "filter_typical.wasm")
DO_NOTHING = os.path.join(os.path.dirname(os.path.abspath(__file__)), "do_nothing_module.c")
BODY = "hello\\n"


def nginx_servers(work):
    """One nginx (one worker on CPU 0) with a server per variant; returns {name: (port, worker)}."""
    variants = {"nginx": "", "nginx + filter (isolation none)": "proxy_wasm one;",
                "nginx + filter (isolation stream)": "proxy_wasm one; proxy_wasm_isolation stream;",
                "nginx + filter (isolation filter)": "proxy_wasm one; proxy_wasm_isolation filter;",
                "nginx + typical filter": "proxy_wasm typical;"}
    ports = {name: free_port() for name in variants}
    servers = "\n".join(f"    server {{ listen 127.0.0.1:{ports[n]}; location / {{ {v} return 200 \"{BODY}\"; }} }}"
                        for n, v in variants.items())
    worker, stop = start_nginx(work, "nginx", 0, servers, wasm=f"module one {FILTER}; module typical {TYPICAL};", wait=ports.values())
    return {name: (port, worker) for name, port in ports.items()}, stop


def v8_filter(name, path):
    return f"""          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                vm_config: {{vm_id: {name}, runtime: envoy.wasm.runtime.v8, code: {{local: {{filename: {path}}}}}}}"""


def do_nothing_filter(work):
    """An `http_filters` entry for the dynamic module that does nothing, built into `work`."""
    path = os.path.join(work, "libdo_nothing.so")
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", path, DO_NOTHING], check=True)
    return dynamic_module_filter("do_nothing", f"{{name: do_nothing, module: {{local: {{filename: {path}}}}}}}",
                                 "do_nothing")


def envoy_servers(work):
    variants = {"Envoy": [], "Envoy + a dynamic module that does nothing": [do_nothing_filter(work)],
                "Envoy + filter (V8)": [v8_filter("one", FILTER)],
                "Envoy + filter (inwasm)": [inwasm_filter(f"{{module: {FILTER}}}")],
                "Envoy + filter (inwasm, isolation stream)": [inwasm_filter(f"{{module: {FILTER}, isolation: stream}}")],
                "Envoy + typical filter (V8)": [v8_filter("typical", TYPICAL)],
                "Envoy + typical filter (inwasm)": [inwasm_filter(f"{{module: {TYPICAL}}}")]}
    return start_envoys(work, variants, BODY, "bench")


# A round in which the hypervisor took more than this share of the CPUs is measured again
# (other machines on the same cores slow every server, but not evenly within a round).
MAX_STEAL = 0.03


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    # Many short rounds: a round's servers are measured closer together, so drift (other
    # tenants of the machine) moves them alike.
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="inwasm-http-")
    nginx, stop_nginx = nginx_servers(work)
    envoy, stop_envoy = envoy_servers(work)
    servers = {**nginx, **envoy}
    try:
        for port, pid in servers.values():
            wrk(port, 1, pid)  # warm up: instances, caches, connections
        kept, rejected = [], []
        while len(kept) < args.rounds and len(kept) + len(rejected) < 2 * args.rounds:
            measured = {name: wrk(port, args.seconds, pid) for name, (port, pid) in servers.items()}
            steal = max(run["steal"] for run in measured.values())
            (kept if steal <= MAX_STEAL else rejected).append((steal, measured))
        measured_rounds = len(kept) + len(rejected)
        # Short of quiet rounds: the least disturbed of the others make up the number.
        kept += sorted(rejected, key=lambda r: r[0])[:args.rounds - len(kept)]
        samples = {name: [measured[name] for _, measured in kept] for name in servers}
        steals = [steal for steal, _ in kept]
    finally:
        stop_nginx()
        stop_envoy()
    rows = {}
    for name, runs in samples.items():
        bare = samples["Envoy" if name.startswith("Envoy") else "nginx"]
        median = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
        rows[name] = {**median, "rounds_rps": [r["rps"] for r in runs],
                      "ratio": statistics.median(r["rps"] / b["rps"] for r, b in zip(runs, bare)),
                      "added_us": statistics.median(1e6 / r["rps"] - 1e6 / b["rps"] for r, b in zip(runs, bare)),
                      "cpu_us": statistics.median(r["cpu_us"] for r in runs),
                      "cpu_ratio": statistics.median(b["cpu_us"] / r["cpu_us"] for r, b in zip(runs, bare)),
                      "cpu_added_us": statistics.median(r["cpu_us"] - b["cpu_us"] for r, b in zip(runs, bare))}
    print(f"{args.rounds} interleaved rounds of {args.seconds} s, medians (ratios and added time per round, then "
          "their median); one server worker on CPU 0, wrk (1 thread, 32 connections) on CPU 1; a 6-byte response. "
          f"Rounds measured: {measured_rounds}; a round in which the hypervisor took more than "
          f"{MAX_STEAL:.0%} of the CPUs (steal time) is measured again, up to twice the rounds in all; the rounds "
          f"kept lost {statistics.median(steals):.1%} (median) and at most {max(steals):.1%}.\n")
    print("| server | requests/s | vs its bare server | added per request | server CPU per request | "
          "bare CPU / this | p50 | p99 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        bare = name in ("nginx", "Envoy")
        added = "" if bare else f"{row['added_us']:+.1f} us"
        cpu = f"{row['cpu_us']:.1f} us" + ("" if bare else f" ({row['cpu_added_us']:+.1f})")
        print(f"| {name} | {row['rps']:,.0f} | {row['ratio']:.1%} | {added} | {cpu} | {row['cpu_ratio']:.1%} "
              f"| {row['p50_us']:.0f} us | {row['p99_us']:.0f} us |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
