"""wrk runs against one server, with the server's CPU time per request and the hypervisor's steal."""

import os
import re
import statistics
import subprocess


def cpu_ns(pid):
    """CPU time all of a process's threads have run, in nanoseconds."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def cpu_ticks():
    """All CPUs' time so far, and the part the hypervisor gave to other machines (steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return sum(fields[:8]), fields[7]


def wrk(port, seconds, server_pid, script=None):
    """A wrk run against `port` (with wrk's Lua `script`, if any): throughput, latency, the
    server process's CPU time per request (less sensitive than throughput to what else the
    machine runs), and the share of the CPUs' time stolen by the hypervisor meanwhile."""
    total, stolen = cpu_ticks()
    before = cpu_ns(server_pid)
    scripted = ["-s", script] if script else []
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", *scripted,
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    cpu = cpu_ns(server_pid) - before
    total_after, stolen_after = cpu_ticks()
    steal = (stolen_after - stolen) / max(total_after - total, 1)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))

    def latency(percent):
        value, unit = re.search(rf"\s{percent}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
    return {"rps": rps, "cpu_us": cpu / 1e3 / requests, "p50_us": latency(50), "p99_us": latency(99), "steal": steal}


def interleaved(servers, rounds, seconds, warm_up, script=None):
    """Each of `servers` ({name: (port, pid)}) warmed up for `warm_up` s, then measured in
    turn, `rounds` times (A B C ... A B C ...): a list of {name: wrk run} per round."""
    for port, pid in servers.values():
        wrk(port, warm_up, pid, script)
    return [{name: wrk(port, seconds, pid, script) for name, (port, pid) in servers.items()} for _ in range(rounds)]


def against(rounds, reference, ratio_key):
    """Per server, its median run (by throughput) with its median CPU per request and, as
    `ratio_key`, the median over rounds of its throughput divided by `reference`'s."""
    rows = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds]
        median = sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]
        ratio = statistics.median(r[name]["rps"] / r[reference]["rps"] for r in rounds)
        rows[name] = {**median, ratio_key: ratio, "cpu_us": statistics.median(r["cpu_us"] for r in runs)}
    return rows
