#!/usr/bin/env python3
"""Restore time, point-in-time replay rate and binlog archive lag.

Starts a sandbox (a primary, two replicas, one coordinator), loads
2**ROWS_LOG2 rows of ~200 bytes into the primary and backs up db2. Then:

- archive lag: TXNS single-row INSERT transactions on the primary, one
  connection, as fast as it goes, while `dbfleet status` is sampled; prints
  the largest and the median `binlog_archive.lag_ms` of the primary seen
  (how far the archive trailed the server, i.e. the RPO);
- restore: `dbfleet backup restore --host db3` (unpack, prepare, swap, start),
  timed by the CLI's wall clock;
- point in time: `dbfleet backup restore --host db3 --to-time T` with T after
  all TXNS transactions; prints the wall time and the replay part the agent
  reports, and the replay rate in transactions per second.

Usage: bench/restore.py; env ROWS_LOG2 (default 18), TXNS (default 20000).
Needs `cargo build --bins` and pymysql.
"""
import os
import re
import statistics
import subprocess
import sys
import threading
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("ROWS_LOG2", "18")
from backup import app_connect, loaded_sandbox  # noqa: E402
from failover import DBFLEET  # noqa: E402

BASE = os.environ.get("BENCH_BASE", "127.0.78")
TXNS = int(os.environ.get("TXNS", "20000"))


def writes(fleet):
    c = app_connect(fleet, "db1")
    cur = c.cursor()
    cur.execute("CREATE TABLE bench_txns (id BIGINT PRIMARY KEY, pad VARCHAR(64))")
    t0 = time.monotonic()
    for n in range(TXNS):
        cur.execute("INSERT INTO bench_txns VALUES (%s, MD5(RAND()))", (n,))
    elapsed = time.monotonic() - t0
    cur.execute("SELECT UNIX_TIMESTAMP()")
    last = cur.fetchone()[0]
    c.close()
    return elapsed, last


def main():
    _, sandbox, fleet, rows = loaded_sandbox("dbfleet-bench-restore-", 2, BASE)
    try:
        b = fleet.cli("backup", "run", "--cluster", "main", "--host", "db2")
        m = b["manifest"]
        print(f"loaded {rows} rows; backup {b['id']}: stream {m['stream_bytes'] / 1e6:.1f} MB, "
              f"stored {b['bytes'] / 1e6:.1f} MB; machine: {os.cpu_count()} cores")

        lags, done = [], threading.Event()

        def sample():
            while not done.is_set():
                c = fleet.status()
                for x in (c or {}).get("members", []):
                    a = x.get("binlog_archive")
                    if x["host"] == "db1" and a:
                        lags.append(a["lag_ms"])
                time.sleep(0.2)

        sampler = threading.Thread(target=sample)
        sampler.start()
        elapsed, last = writes(fleet)
        done.set()
        sampler.join()
        print(f"archive lag during {TXNS} transactions in {elapsed:.1f} s ({TXNS / elapsed:.0f}/s): "
              f"max {max(lags)} ms, median {statistics.median(lags):.0f} ms over {len(lags)} samples")

        t0 = time.monotonic()
        r = fleet.cli("backup", "restore", b["id"], "--host", "db3")
        print(f"restore (no target): {r['status']} in {time.monotonic() - t0:.2f} s  [{r['detail']}]")

        while int(time.time()) <= last:
            time.sleep(0.05)
        target = last + 1
        time.sleep(2)  # let the archive's head pass the target
        t0 = time.monotonic()
        r = fleet.cli("backup", "restore", b["id"], "--host", "db3", "--to-time", str(target))
        wall = time.monotonic() - t0
        replay = re.search(r"in ([0-9.]+)s to GTID", r["detail"])
        secs = float(replay.group(1)) if replay else float("nan")
        rate = (TXNS + 1) / secs if secs > 0 else float("nan")
        print(f"point-in-time restore: {r['status']} in {wall:.2f} s; replay of {TXNS + 1} transactions "
              f"in {secs:.2f} s = {rate:.0f} transactions/s  [{r['detail']}]")
        status = fleet.cli("status")
        cur = app_connect(fleet, "db3").cursor()
        cur.execute("SELECT COUNT(*) FROM bench_txns")
        print(f"db3 holds {cur.fetchone()[0]} of the {TXNS} transactions' rows; status problems: "
              f"{[p['kind'] for p in status['clusters'][0]['problems']]}")
    finally:
        subprocess.run([DBFLEET, "sandbox", "down", "--dir", sandbox], capture_output=True)


if __name__ == "__main__":
    main()
