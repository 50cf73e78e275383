#!/usr/bin/env python3
"""Deadline precision: the time from a spinning filter's limit to its 503, through nginx and
through Envoy (both with this project's module), over many requests.

The filter loops forever in `on_request_headers`; the limit is 20 ms. Each request's total
time less the limit is how late the deadline fired (plus the request's own round trip,
measured alone with a well-behaved request and shown beside). Prints a markdown table;
`--json FILE` also writes every sample.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from servers import FILTERS, NGINX, NGINX_MODULE, envoy_yaml, free_port, inwasm_filter, start_envoy, wait_port  # noqa: E402

MISBEHAVE = os.path.join(FILTERS, "filter_misbehave.wasm")
LIMIT_MS = 20


def timed_request(port, mode):
    """One request; the time until its whole response (by Content-Length) is in."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nx-misbehave: {mode}\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += s.recv(65536)
        head, body = reply.split(b"\r\n\r\n", 1)
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += s.recv(65536)
    elapsed = (time.monotonic() - started) * 1e3
    return elapsed, int(head.split(b" ", 2)[1])


def nginx(work):
    port = free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""load_module {NGINX_MODULE};
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log crit;
events {{ worker_connections 64; }}
wasm {{ module misbehave {MISBEHAVE}; }}
http {{
    access_log off;
    server {{ listen 127.0.0.1:{port};
        location / {{ proxy_wasm misbehave ok; proxy_wasm_timeout {LIMIT_MS}ms; return 200 "ok\\n"; }} }}
}}
""")
    subprocess.run([NGINX, "-p", work, "-c", conf], check=True)
    wait_port(port)
    return port, lambda: subprocess.run([NGINX, "-p", work, "-c", conf, "-s", "stop"], capture_output=True)


def envoy(work):
    port, admin = free_port(), free_port()
    path = os.path.join(work, "envoy.yaml")
    inwasm = inwasm_filter(f"{{module: {MISBEHAVE}, configuration: ok, timeout: {LIMIT_MS}ms}}")
    with open(path, "w") as f:
        f.write(envoy_yaml(port, admin, "ok\\n", [inwasm], "deadline"))
    process = start_envoy(path, os.path.join(work, "envoy.log"), "critical")
    wait_port(port)
    return port, lambda: (process.terminate(), process.wait())


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="inwasm-deadline-")
    results = {}
    for name, start in (("nginx + inwasm", nginx), ("Envoy + inwasm", envoy)):
        port, stop = start(work)
        try:
            normal = [timed_request(port, "ok")[0] for _ in range(20)]
            late = []
            for _ in range(args.requests):
                elapsed, status = timed_request(port, "spin")
                if status != 503:
                    sys.exit(f"{name}: a spinning filter answered {status}, not 503")
                late.append(elapsed - LIMIT_MS)
                timed_request(port, "ok")  # the worker serves on
        finally:
            stop()
        results[name] = {"late_ms": late, "normal_ms": statistics.median(normal)}
    print(f"{args.requests} requests to a filter that loops forever, limit {LIMIT_MS} ms: "
          "time from the limit to the 503.\n")
    print("| host | min | median | p90 | p99 | max | a normal request (median) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        late = r["late_ms"]
        print(f"| {name} | {min(late):.2f} ms | {statistics.median(late):.2f} ms | {percentile(late, 90):.2f} ms | "
              f"{percentile(late, 99):.2f} ms | {max(late):.2f} ms | {r['normal_ms']:.2f} ms |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
