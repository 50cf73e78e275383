#!/usr/bin/env python3
"""Start-up and density of nginx with N distinct modules, each on its own location.

For each N: the start time with a cold compiled-code cache, then `nginx -t` and start times
with the cache filled; master and worker RSS once started; memory per idle module (the growth of
RSS over N = 1); the latency of the first request to a module nobody used yet; then every
module used once, in turn: how many answered through their filter, and the worker's RSS
after (a worker keeps at most 1,000 live instances, releasing idle ones to make room).

Each module is a small proxy-wasm filter in text format (it adds one response header), made
distinct by its own tenant name, so every one is compiled (and cached) on its own. With
`--filter FILE.wasm` (an SDK-built filter that adds response header `--marker`), each module
is a copy of that file made distinct by a custom section of its own, as tenants upload real
filters. Memory is also reported as PSS summed over the master and its workers (what the
modules cost the machine, shared pages counted once), with `--workers` workers. Prints a
markdown table; `--json FILE` also writes the numbers.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from servers import NGINX, NGINX_MODULE, children, free_port, rss_kib, wait_port  # noqa: E402

FILTER = """(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (data (i32.const 16) "x-tenant")
  (data (i32.const 32) "{name}")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32)
    (global.get $heap) (global.set $heap (i32.add (global.get $heap) (local.get $n))))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 16) (i32.const 8) (i32.const 32) (i32.const {length})))
    (i32.const 0)))
"""


def leb128(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def distinct_copy(wasm, name):
    """`wasm` with a custom section `inwasm-density` holding `name` appended."""
    section_name = b"inwasm-density"
    body = leb128(len(section_name)) + section_name + name.encode()
    return wasm + b"\x00" + leb128(len(body)) + body


def write_module(modules, name, base):
    """Writes module `name` (a copy of `base`'s bytes, or the text filter); returns its path."""
    path = os.path.join(modules, f"{name}.wasm" if base else f"{name}.wat")
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(distinct_copy(base, name) if base else FILTER.format(name=name, length=len(name)).encode())
    return path


def write_config(work, count, port, module_so, base, workers=1):
    modules = os.path.join(work, "modules")
    os.makedirs(modules, exist_ok=True)
    lines = [f"load_module {module_so};", f"worker_processes {workers};", f"pid {work}/nginx.pid;",
             f"error_log {work}/error.log notice;", "events { worker_connections 256; }",
             "wasm {", f"    cache_dir {work}/cache;"]
    locations = []
    for i in range(count):
        name = f"t{i}"
        path = write_module(modules, name, base)
        lines.append(f"    module {name} {path};")
        locations.append(f"        location = /{name} {{ proxy_wasm {name}; return 200 'ok\\n'; }}")
    lines += ["}", "http {", "    access_log off;", "    keepalive_requests 100000;",
              f"    client_body_temp_path {work}/body;",
              f"    server {{ listen 127.0.0.1:{port};"] + locations + ["    }", "}"]
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    return conf


def timed(args):
    started = time.monotonic()
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stderr}")
    return time.monotonic() - started


def first_request(port, path, marker):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    elapsed = time.monotonic() - started
    if marker not in reply.lower():
        sys.exit(f"GET {path}: the filter did not run:\n{reply!r}")
    return elapsed


def use_every_module(port, count, marker):
    """Requests /t0 ... /t{count-1} once each on one keep-alive connection; returns how many
    answered 200 through their filter."""
    served = 0
    with socket.create_connection(("127.0.0.1", port)) as s:
        reader = s.makefile("rb")
        for i in range(count):
            s.sendall(f"GET /t{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status = reader.readline()
            headers = []
            while (line := reader.readline()) not in (b"\r\n", b""):
                headers.append(line.lower())
            length = next(int(h.split(b":")[1]) for h in headers if h.startswith(b"content-length:"))
            reader.read(length)
            served += status.startswith(b"HTTP/1.1 200") and any(h.startswith(marker) for h in headers)
    return served


def start(nginx, work, conf, port, marker, count):
    """Starts nginx; returns (seconds until it serves, master pid)."""
    started = time.monotonic()
    subprocess.run([nginx, "-p", work, "-c", conf], check=True, capture_output=True)
    # A cold start compiles every module first: about a second of a CPU for each SDK-built one.
    wait_port(port, limit=600 + count)
    # Serving means a worker took the connection: ask once so the worker is surely up.
    first_request(port, "/t0", marker)
    elapsed = time.monotonic() - started
    with open(os.path.join(work, "nginx.pid")) as f:
        return elapsed, int(f.read())


def stop(nginx, work, conf, master):
    subprocess.run([nginx, "-p", work, "-c", conf, "-s", "stop"], capture_output=True)
    for _ in range(500):
        if not os.path.exists(f"/proc/{master}"):
            return
        time.sleep(0.01)


def pss_kib(pids):
    """The PSS of `pids`, summed."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    return total


def measure(nginx, module_so, count, base, marker, workers):
    work = tempfile.mkdtemp(prefix=f"inwasm-density-{count}-")
    try:
        port = free_port()
        conf = write_config(work, count, port, module_so, base, workers)
        start_cold, master = start(nginx, work, conf, port, marker, count)
        stop(nginx, work, conf, master)
        test_cached = timed([nginx, "-t", "-q", "-p", work, "-c", conf])
        start_cached, master = start(nginx, work, conf, port, marker, count)
        # Every worker up, so that the PSS counts them all.
        deadline = time.monotonic() + 30
        while len(children(master)) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        worker = children(master)[0]
        master_rss, worker_rss = rss_kib(master), rss_kib(worker)
        pss = pss_kib([master, *children(master)])
        unused = f"/t{count - 1}" if count > 1 else "/t0"
        first = first_request(port, unused, marker)
        again = first_request(port, unused, marker)
        served = use_every_module(port, count, marker)
        used_rss = rss_kib(worker)
        stop(nginx, work, conf, master)
        return {"modules": count, "workers": workers, "start_cold_s": start_cold,
                "test_cached_s": test_cached, "start_cached_s": start_cached,
                "master_rss_kib": master_rss, "worker_rss_kib": worker_rss, "pss_kib": pss,
                "first_request_ms": first * 1e3, "next_request_ms": again * 1e3,
                "served_all_once": served, "worker_rss_all_used_kib": used_rss}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", default="1,100,1000,10000")
    parser.add_argument("--nginx", default=NGINX)
    parser.add_argument("--module", default=NGINX_MODULE)
    parser.add_argument("--filter", help="an SDK-built filter to copy instead of the text-format one")
    parser.add_argument("--marker", default="x-wasm", help="the response header that --filter adds")
    parser.add_argument("--workers", type=int, default=1, help="nginx workers (the PSS sums them all)")
    parser.add_argument("--json")
    args = parser.parse_args()
    # The response header that shows a module's filter ran: the text filter's, or --marker.
    base, marker = None, b"x-tenant:"
    if args.filter:
        marker = args.marker.lower().encode() + b":"
        with open(args.filter, "rb") as f:
            base = f.read()
    rows = [measure(args.nginx, args.module, int(n), base, marker, args.workers) for n in args.counts.split(",")]
    first = rows[0]
    print("| modules | start cold | `nginx -t` cached | start cached | master RSS | worker RSS "
          f"| per idle module (worker RSS) | per idle module (PSS, master + {args.workers} worker(s)) "
          "| first request to an unused module | next request | every module used once: served | worker RSS after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        extra = row["modules"] - first["modules"]
        per_module = (row["worker_rss_kib"] - first["worker_rss_kib"]) / extra if extra else 0
        per_module_pss = (row["pss_kib"] - first["pss_kib"]) / extra if extra else 0
        row["per_module_kib"], row["per_module_pss_kib"] = per_module, per_module_pss
        print(f"| {row['modules']} | {row['start_cold_s']:.2f} s | "
              f"{row['test_cached_s']:.2f} s | {row['start_cached_s']:.2f} s | {row['master_rss_kib'] / 1024:.1f} MiB | "
              f"{row['worker_rss_kib'] / 1024:.1f} MiB | {per_module:.1f} KiB | {per_module_pss:.1f} KiB | "
              f"{row['first_request_ms']:.2f} ms | "
              f"{row['next_request_ms']:.2f} ms | {row['served_all_once']} of {row['modules']} | "
              f"{row['worker_rss_all_used_kib'] / 1024:.1f} MiB |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
