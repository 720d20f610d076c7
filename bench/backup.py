#!/usr/bin/env python3
"""Physical backup throughput: dbfleet against the plain shell pipeline.

Starts a sandbox (a primary and one replica, one coordinator), loads
2**ROWS_LOG2 rows of ~200 bytes into the primary, waits for the replica,
then ROUNDS times each, alternating, on the same replica:

- dbfleet: `dbfleet backup run --host db2` (mariadb-backup streamed through
  the agent's zstd level 3 with 2 threads and SHA-256 into the repository,
  manifest last), timed by the CLI's wall clock;
- pipeline: `mariadb-backup --backup --stream=xbstream | zstd -3 -T2 > file`.

It prints the stream size, stored size (compression ratio) and throughput
(stream bytes per second) of each, and the time of `dbfleet backup verify`
(restore, prepare, start, CHECK TABLE) for the last dbfleet backup.

With --flavor mysql the servers are MySQL 9.7 (./scripts/install-mysql):
dbfleet takes the backup with the CLONE plugin, and the pipeline is
`CLONE LOCAL DATA DIRECTORY` then `tar | zstd -3 -T2 > file`.

Usage: bench/backup.py [ROUNDS] [--flavor mariadb|mysql] (default 3
rounds, MariaDB; FLAVOR in the environment works too); env ROWS_LOG2
(default 20). Needs `cargo build --bins` and pymysql.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import pymysql

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from failover import DBFLEET, Fleet, bench_args  # noqa: E402

BASE = os.environ.get("BENCH_BASE", "127.0.79")
ROWS_LOG2 = int(os.environ.get("ROWS_LOG2", "20"))
FLAVOR = os.environ.get("FLAVOR", "mariadb")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def app_connect(fleet, host):
    """The application account on `host`, autocommit."""
    m, i = fleet.members[host], fleet.info
    return pymysql.connect(host=m["address"], port=m["mysql_port"], user=i["app_user"],
                           password=i["app_password"], database=i["app_database"], autocommit=True,
                           **fleet.tls())


def load(fleet):
    cur = app_connect(fleet, "db1").cursor()
    cur.execute("CREATE TABLE bench_rows (id BIGINT AUTO_INCREMENT PRIMARY KEY, pad VARCHAR(255))")
    cur.execute("INSERT INTO bench_rows (pad) VALUES (REPEAT(SHA2(RAND(), 256), 3))")
    for _ in range(ROWS_LOG2):
        cur.execute("INSERT INTO bench_rows (pad) SELECT REPEAT(SHA2(RAND(), 256), 3) FROM bench_rows")
    cur.execute("SELECT COUNT(*) FROM bench_rows")
    return cur.fetchone()[0]


def wait_replica(fleet):
    while True:
        c = fleet.status()
        m = {x["host"]: x for x in c["members"]} if c else {}
        if m and m["db2"]["gtid_executed"] == m["db1"]["gtid_executed"] and m["db2"]["lag_seconds"] == 0:
            return
        time.sleep(0.5)


def agent_client_cnf(fleet, out_dir):
    """A client option file (0600) for db2's agent account over its socket."""
    agent_cfg = open(os.path.join(fleet.dir, "agent-db2.toml")).read()
    get = lambda k: [l.split("=", 1)[1].strip().strip('"') for l in agent_cfg.splitlines() if l.startswith(k + " ")][0]
    password = open(os.path.join(fleet.dir, "secrets", "agent-mysql.password")).read().strip()
    cnf = os.path.join(out_dir, "client.cnf")
    with open(cnf, "w") as f:
        f.write(f"[client]\nuser={get('user')}\npassword={password}\nsocket={get('socket')}\n")
    os.chmod(cnf, 0o600)
    return cnf


def pipeline(fleet, out_dir):
    if FLAVOR == "mysql":
        return pipeline_clone(fleet, out_dir)
    cnf = agent_client_cnf(fleet, out_dir)
    datadir = os.path.join(fleet.dir, "db2", "data")
    tmp = os.path.join(out_dir, "tool-tmp")
    os.makedirs(tmp, exist_ok=True)
    target = os.path.join(out_dir, "pipeline.xbstream.zst")
    t0 = time.monotonic()
    subprocess.run(
        f"mariadb-backup --defaults-extra-file={cnf} --backup --stream=xbstream --slave-info "
        f"--datadir={datadir} --target-dir={tmp} 2>{out_dir}/pipeline.log "
        f"| tee >(wc -c > {out_dir}/stream.bytes) | zstd -3 -T2 -q > {target}",
        shell=True, check=True, executable="/bin/bash")
    elapsed = time.monotonic() - t0
    time.sleep(0.2)
    stream = int(open(os.path.join(out_dir, "stream.bytes")).read().strip())
    stored = os.path.getsize(target)
    os.remove(target)
    return elapsed, stream, stored


def pipeline_clone(fleet, out_dir):
    """MySQL's own way: CLONE LOCAL as the agent's account, then tar | zstd."""
    cnf = agent_client_cnf(fleet, out_dir)
    # mysqld writes the copy itself: a directory its user may write in
    parent = os.path.join(out_dir, "clone-parent")
    os.makedirs(parent, exist_ok=True)
    if os.geteuid() == 0:
        subprocess.run(["chown", "mysql:mysql", parent], check=True)
    copy = os.path.join(parent, "copy")
    subprocess.run(["rm", "-rf", copy], check=True)
    target = os.path.join(out_dir, "pipeline.tar.zst")
    mysql = os.path.join(ROOT, "target", "tools", "mysql", "bin", "mysql")
    t0 = time.monotonic()
    subprocess.run([mysql, f"--defaults-extra-file={cnf}", "-e", f"CLONE LOCAL DATA DIRECTORY = '{copy}'"],
                   check=True)
    subprocess.run(
        f"tar -C {copy} -cf - . | tee >(wc -c > {out_dir}/stream.bytes) | zstd -3 -T2 -q > {target}",
        shell=True, check=True, executable="/bin/bash")
    elapsed = time.monotonic() - t0
    time.sleep(0.2)
    stream = int(open(os.path.join(out_dir, "stream.bytes")).read().strip())
    stored = os.path.getsize(target)
    os.remove(target)
    subprocess.run(["rm", "-rf", copy], check=True)
    return elapsed, stream, stored


def loaded_sandbox(prefix, replicas, base):
    """A sandbox with the rows loaded and db2 caught up: (work dir, sandbox dir, fleet, rows)."""
    work = tempfile.mkdtemp(prefix=prefix)
    # mkdtemp makes it 0700; the sandbox's mysqld runs as the mysql user
    os.chmod(work, 0o755)
    sandbox = os.path.join(work, "sandbox")
    subprocess.run([DBFLEET, "sandbox", "up", "--dir", sandbox, "--replicas", str(replicas),
                    "--coordinators", "1", "--base", base, "--flavor", FLAVOR],
                   check=True, capture_output=True)
    fleet = Fleet(sandbox)
    try:
        fleet.wait_healthy()
        rows = load(fleet)
        wait_replica(fleet)
    except BaseException:
        subprocess.run([DBFLEET, "sandbox", "down", "--dir", sandbox], capture_output=True)
        raise
    return work, sandbox, fleet, rows


def main():
    global FLAVOR
    rounds, FLAVOR = bench_args(3)
    work, sandbox, fleet, rows = loaded_sandbox("dbfleet-bench-backup-", 1, BASE)
    try:
        print(f"loaded {rows} rows; flavor {FLAVOR}; machine: {os.cpu_count()} cores")
        last = None
        for r in range(rounds):
            t0 = time.monotonic()
            b = fleet.cli("backup", "run", "--cluster", "main", "--host", "db2")
            d = time.monotonic() - t0
            m = b["manifest"]
            agent_s = (m["finished_at_unix_ms"] - m["started_at_unix_ms"]) / 1000
            print(f"round {r + 1} dbfleet:   {d:6.2f} s (agent {agent_s:5.2f} s)  stream {m['stream_bytes'] / 1e6:8.1f} MB  "
                  f"stored {b['bytes'] / 1e6:7.1f} MB  ratio {m['stream_bytes'] / b['bytes']:5.2f}  "
                  f"{m['stream_bytes'] / 1e6 / d:7.1f} MB/s (agent {m['stream_bytes'] / 1e6 / agent_s:7.1f} MB/s)")
            last = b["id"]
            d, stream, stored = pipeline(fleet, work)
            print(f"round {r + 1} pipeline:  {d:6.2f} s                 stream {stream / 1e6:8.1f} MB  "
                  f"stored {stored / 1e6:7.1f} MB  ratio {stream / stored:5.2f}  {stream / 1e6 / d:7.1f} MB/s")
        t0 = time.monotonic()
        v = fleet.cli("backup", "verify", last)
        print(f"verify of {last}: {v['verification']} in {time.monotonic() - t0:.2f} s")
    finally:
        subprocess.run([DBFLEET, "sandbox", "down", "--dir", sandbox], capture_output=True)


if __name__ == "__main__":
    main()
