#!/usr/bin/env python3
"""Coordinator takeover time over repeated kill -9 of the active.

Starts a sandbox fleet (3 MariaDB servers, 3 voting agents, 2 coordinators
with the sandbox lease: T=5s, r=1s, tau=0.5s, rho=1%, delta=0.5s), then
repeatedly kills the active coordinator with SIGKILL and measures the time
until `dbfleet coordinators` shows the other one active. The killed one is
restarted and allowed to catch up before the next round.

Usage: bench/takeover.py [ROUNDS] (default 10); needs `cargo build --bins`.
Prints one line per round and a summary; see docs/benchmarks.md.
"""
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "debug")
DBFLEET = os.path.join(BIN, "dbfleet")
BASE = os.environ.get("BENCH_BASE", "127.0.77")


def coordinators(env):
    out = subprocess.run([DBFLEET, "coordinators", "--output", "json"], env=env,
                         capture_output=True, text=True)
    try:
        return json.loads(out.stdout)["coordinators"]
    except (ValueError, KeyError):
        return []


def wait(env, what, pred, timeout=60.0, every=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        c = coordinators(env)
        if pred(c):
            return c
        time.sleep(every)
    sys.exit(f"timed out waiting for {what}: {c}")


def role(c, cid):
    return next((x["role"] for x in c if x["id"] == cid), None)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    work = tempfile.mkdtemp(prefix="dbfleet-bench-")
    # mkdtemp makes it 0700; the sandbox's mysqld runs as the mysql user
    os.chmod(work, 0o755)
    sandbox = os.path.join(work, "sb")
    subprocess.run([DBFLEET, "sandbox", "up", "--dir", sandbox, "--base", BASE], check=True,
                   stdout=subprocess.DEVNULL)
    env = dict(os.environ, DBFLEET_CONFIG=os.path.join(sandbox, "dbfleet.toml"))
    times = []
    try:
        for i in range(rounds):
            c = wait(env, "one active and a caught-up standby",
                     lambda c: sum(x["role"] == "active" for x in c) == 1
                     and any(x["role"] == "standby" and x["oplog_lag"] == 0 for x in c))
            active = next(x["id"] for x in c if x["role"] == "active")
            other = next(x["id"] for x in c if x["id"] != active)
            with open(os.path.join(sandbox, "run", f"coordinator-{active}.pid")) as f:
                pid = int(f.read().strip())
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            wait(env, "takeover", lambda c: role(c, other) == "active")
            took = time.monotonic() - t0
            times.append(took)
            print(f"round {i + 1}: killed {active}, {other} active after {took:.2f} s", flush=True)
            cfg = os.path.join(sandbox, f"coordinator-{active}.toml")
            log = open(os.path.join(sandbox, "logs", f"coordinator-{active}.log"), "ab")
            p = subprocess.Popen([os.path.join(BIN, "dbfleet-coordinator"), "--config", cfg],
                                 stdout=log, stderr=log, start_new_session=True)
            with open(os.path.join(sandbox, "run", f"coordinator-{active}.pid"), "w") as f:
                f.write(str(p.pid))
        print(f"takeover over {len(times)} kills: min {min(times):.2f} s, "
              f"median {statistics.median(times):.2f} s, max {max(times):.2f} s "
              f"(bound: lease*(1+drift)+margin+renew+rpc_timeout = 7.05 s)")
    finally:
        subprocess.run([DBFLEET, "sandbox", "down", "--dir", sandbox], stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
