//! Host metrics beside mysqld's, so that one scrape shows whether a slow
//! or stuck server is starved of CPU, memory or disk: the host's CPU time
//! and memory, the space and I/O of the filesystem and block device
//! holding mysqld's data directory, and the agent's own footprint. All are
//! read at scrape time from `/proc` and `statvfs` (a few small reads, no
//! mysqld query). The parsers are pure; [`read`] is the only I/O.
//!
//! The data directory's device is the one `stat()` names (`st_dev`),
//! looked up in `/proc/diskstats`: a partition counts as itself, a
//! device-mapper or md volume as the volume. A data directory on a
//! filesystem without a block device (overlayfs, tmpfs, btrfs subvolumes,
//! NFS) has no line there, and the disk I/O families are left out.

use std::path::Path;

use nix::unistd::{SysconfVar, sysconf};
use tracing::debug;

use super::family::{Family, Kind};

/// `/proc/stat`'s CPU modes, in the kernel's order (`guest` and
/// `guest_nice` are left out: they are already counted in `user` and
/// `nice`).
const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// `/proc/diskstats` counts sectors of 512 bytes whatever the device's
/// sector size.
const SECTOR_BYTES: f64 = 512.0;

/// The host's total time per CPU mode, in clock ticks, from `/proc/stat`'s
/// first (`cpu`) line; modes an old kernel does not show are left out.
pub fn parse_cpu(stat: &str) -> Option<Vec<(&'static str, u64)>> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.map_while(|f| f.parse().ok()).collect();
    if values.is_empty() {
        return None;
    }
    Some(CPU_MODES.into_iter().zip(values).collect())
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo(meminfo: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let mut parts = rest.split_whitespace();
            let n: u64 = parts.next()?.parse().ok()?;
            match parts.next() {
                Some("kB") => n.checked_mul(1024),
                None => Some(n),
                Some(_) => None,
            }
        })
    };
    (field("MemTotal"), field("MemAvailable"))
}

/// One block device's I/O counters.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskIo {
    /// The kernel's name for it (`sda1`, `dm-0`, `nvme0n1p2`).
    pub device: String,
    /// Bytes read.
    pub read_bytes: f64,
    /// Bytes written.
    pub written_bytes: f64,
    /// Seconds the device had I/O in flight.
    pub io_seconds: f64,
}

/// The `/proc/diskstats` line of device `major:minor`.
pub fn parse_diskstats(diskstats: &str, major: u64, minor: u64) -> Option<DiskIo> {
    diskstats.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 13 || f[0].parse() != Ok(major) || f[1].parse() != Ok(minor) {
            return None;
        }
        let n = |i: usize| f[i].parse::<u64>().ok().map(|v| v as f64);
        Some(DiskIo {
            device: f[2].to_string(),
            read_bytes: n(5)? * SECTOR_BYTES,
            written_bytes: n(9)? * SECTOR_BYTES,
            io_seconds: n(12)? / 1000.0,
        })
    })
}

/// A process's user and system CPU time in clock ticks (`utime`,
/// `stime`) from its `/proc/PID/stat`. The command name in parentheses
/// may hold spaces and parentheses, so fields are counted from the last
/// `)`.
pub fn parse_process_cpu(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    // after the name: state is field 3, utime 14, stime 15
    let mut fields = rest.split_whitespace().skip(11);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// A process's resident pages, the second field of `/proc/PID/statm`.
pub fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// Size and space available to unprivileged users of a filesystem, in
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FsSpace {
    /// Total size.
    pub size: f64,
    /// Available to mysqld (not counting blocks reserved for root).
    pub avail: f64,
}

/// What one scrape read of the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostSample {
    /// Host CPU seconds per mode.
    pub cpu: Vec<(&'static str, f64)>,
    /// `MemTotal`, bytes.
    pub memory_total: Option<f64>,
    /// `MemAvailable`, bytes.
    pub memory_available: Option<f64>,
    /// The data directory's filesystem.
    pub datadir_fs: Option<FsSpace>,
    /// The data directory's block device.
    pub datadir_disk: Option<DiskIo>,
    /// The agent's resident memory, bytes.
    pub agent_resident: Option<f64>,
    /// The agent's user and system CPU seconds.
    pub agent_cpu: Option<(f64, f64)>,
}

/// `sysconf(var)`, or `fallback` where the libc does not say.
fn sysconf_or(var: SysconfVar, fallback: f64) -> f64 {
    match sysconf(var) {
        Ok(Some(v)) if v > 0 => v as f64,
        _ => fallback,
    }
}

fn read_proc(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .map_err(|e| debug!(path, error = %e, "cannot read for host metrics"))
        .ok()
}

/// Reads the host now; `datadir` is mysqld's data directory when known.
/// What cannot be read is left out (and logged at debug level).
pub fn read(datadir: Option<&Path>) -> HostSample {
    // USER_HZ: 100 on every Linux architecture dbfleet is built for
    let hz = sysconf_or(SysconfVar::CLK_TCK, 100.0);
    let page = sysconf_or(SysconfVar::PAGE_SIZE, 4096.0);
    let mut out = HostSample::default();
    if let Some(cpu) = read_proc("/proc/stat").as_deref().and_then(parse_cpu) {
        out.cpu = cpu.into_iter().map(|(m, t)| (m, t as f64 / hz)).collect();
    }
    if let Some(text) = read_proc("/proc/meminfo") {
        let (total, available) = parse_meminfo(&text);
        out.memory_total = total.map(|v| v as f64);
        out.memory_available = available.map(|v| v as f64);
    }
    if let Some(dir) = datadir {
        match nix::sys::statvfs::statvfs(dir) {
            Ok(s) => {
                let frag = s.fragment_size() as f64;
                out.datadir_fs = Some(FsSpace {
                    size: s.blocks() as f64 * frag,
                    avail: s.blocks_available() as f64 * frag,
                });
            }
            Err(e) => {
                debug!(datadir = %dir.display(), error = %e, "cannot statvfs the data directory")
            }
        }
        match nix::sys::stat::stat(dir) {
            Ok(st) => {
                let (major, minor) = (
                    nix::sys::stat::major(st.st_dev),
                    nix::sys::stat::minor(st.st_dev),
                );
                out.datadir_disk =
                    read_proc("/proc/diskstats").and_then(|t| parse_diskstats(&t, major, minor));
            }
            Err(e) => {
                debug!(datadir = %dir.display(), error = %e, "cannot stat the data directory")
            }
        }
    }
    out.agent_resident = read_proc("/proc/self/statm")
        .as_deref()
        .and_then(parse_statm_resident)
        .map(|p| p as f64 * page);
    out.agent_cpu = read_proc("/proc/self/stat")
        .as_deref()
        .and_then(parse_process_cpu)
        .map(|(u, s)| (u as f64 / hz, s as f64 / hz));
    out
}

/// The host families of `sample`, each labelled `cluster` and `host`.
pub fn families(cluster: &str, host: &str, sample: &HostSample) -> Vec<Family> {
    let id = [("cluster", cluster), ("host", host)];
    let one = |name: &str, help: &str, kind: Kind, value: f64| {
        Family::single(name, help, kind, &id, value)
    };
    let mut out = Vec::new();
    if !sample.cpu.is_empty() {
        let mut cpu = Family::new(
            "dbfleet_host_cpu_seconds_total",
            "CPU time of the whole host (all CPUs) per mode, from /proc/stat",
            Kind::Counter,
        );
        for (mode, seconds) in &sample.cpu {
            cpu.push(&[id[0], id[1], ("mode", mode)], *seconds);
        }
        out.push(cpu);
    }
    if let Some(v) = sample.memory_total {
        out.push(one(
            "dbfleet_host_memory_total_bytes",
            "The host's memory (MemTotal)",
            Kind::Gauge,
            v,
        ));
    }
    if let Some(v) = sample.memory_available {
        out.push(one(
            "dbfleet_host_memory_available_bytes",
            "Memory available to new allocations without swapping (MemAvailable)",
            Kind::Gauge,
            v,
        ));
    }
    if let Some(fs) = sample.datadir_fs {
        out.push(one(
            "dbfleet_datadir_filesystem_size_bytes",
            "Size of the filesystem holding mysqld's datadir",
            Kind::Gauge,
            fs.size,
        ));
        out.push(one(
            "dbfleet_datadir_filesystem_avail_bytes",
            "Space mysqld can still use on the filesystem holding its datadir (not counting root's reserve)",
            Kind::Gauge,
            fs.avail,
        ));
    }
    if let Some(d) = &sample.datadir_disk {
        let labels = [id[0], id[1], ("device", d.device.as_str())];
        for (name, help, value) in [
            (
                "dbfleet_datadir_disk_read_bytes_total",
                "Bytes read from the block device holding mysqld's datadir",
                d.read_bytes,
            ),
            (
                "dbfleet_datadir_disk_written_bytes_total",
                "Bytes written to the block device holding mysqld's datadir",
                d.written_bytes,
            ),
            (
                "dbfleet_datadir_disk_io_time_seconds_total",
                "Seconds the block device holding mysqld's datadir had I/O in flight (its rate is the utilisation)",
                d.io_seconds,
            ),
        ] {
            out.push(Family::single(name, help, Kind::Counter, &labels, value));
        }
    }
    if let Some(v) = sample.agent_resident {
        out.push(one(
            "dbfleet_agent_resident_memory_bytes",
            "The agent process's resident memory",
            Kind::Gauge,
            v,
        ));
    }
    if let Some((user, system)) = sample.agent_cpu {
        let mut cpu = Family::new(
            "dbfleet_agent_cpu_seconds_total",
            "CPU time the agent process used, per mode (user, system)",
            Kind::Counter,
        );
        cpu.push(&[id[0], id[1], ("mode", "user")], user);
        cpu.push(&[id[0], id[1], ("mode", "system")], system);
        out.push(cpu);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_modes_come_from_the_first_line_without_guest_time() {
        let stat = "cpu  30075 0 7492 36515 251 0 81 28 5 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1 2\n";
        let cpu = parse_cpu(stat).unwrap();
        assert_eq!(cpu.len(), 8);
        assert_eq!(cpu[0], ("user", 30075));
        assert_eq!(cpu[3], ("idle", 36515));
        assert_eq!(cpu[7], ("steal", 28));
        // a 2.6.11 kernel shows no steal
        let old = parse_cpu("cpu 1 2 3 4 5 6 7\n").unwrap();
        assert_eq!(old.last(), Some(&("softirq", 7)));
        assert_eq!(parse_cpu("intr 1 2\n"), None);
        assert_eq!(parse_cpu(""), None);
    }

    #[test]
    fn meminfo_is_read_in_bytes() {
        let m = "MemTotal:       24683568 kB\nMemFree:        21100352 kB\nMemAvailable:   24126776 kB\nHugePages_Total:       0\n";
        assert_eq!(
            parse_meminfo(m),
            (Some(24683568 * 1024), Some(24126776 * 1024))
        );
        assert_eq!(parse_meminfo("MemTotal: 8 kB\n"), (Some(8192), None));
        assert_eq!(parse_meminfo("MemTotalX: 8 kB\n"), (None, None));
    }

    #[test]
    fn diskstats_line_of_the_device_in_bytes_and_seconds() {
        let d = "   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n \
                 254       0 vda 23307 9024 2316006 7093 120573 105021 7734392 59868 0 84932 81630 0 0 0 0 4497 14668\n \
                 254       1 vda1 100 0 800 7 200 0 1600 50 0 900 57\n";
        assert_eq!(
            parse_diskstats(d, 254, 0),
            Some(DiskIo {
                device: "vda".into(),
                read_bytes: 2316006.0 * 512.0,
                written_bytes: 7734392.0 * 512.0,
                io_seconds: 84.932,
            })
        );
        // a partition counts as itself; kernels before 4.18 have 14 fields
        assert_eq!(parse_diskstats(d, 254, 1).unwrap().device, "vda1");
        assert_eq!(parse_diskstats(d, 254, 1).unwrap().io_seconds, 0.9);
        // overlayfs, tmpfs: an anonymous device, no line
        assert_eq!(parse_diskstats(d, 0, 45), None);
    }

    #[test]
    fn process_cpu_counts_fields_after_the_name() {
        let stat = "18211 (dbfleet agent) (x) S 18204 18204 11170 0 -1 4194304 100 0 1 0 250 75 0 0 20 0 1 0 123 456 789\n";
        assert_eq!(parse_process_cpu(stat), Some((250, 75)));
        assert_eq!(parse_process_cpu("18211 (short) S 1 2"), None);
        assert_eq!(parse_statm_resident("765 437 409 5 0 123 0\n"), Some(437));
        assert_eq!(parse_statm_resident("765"), None);
    }

    #[test]
    fn families_carry_cluster_and_host_and_leave_out_what_is_unknown() {
        let sample = HostSample {
            cpu: vec![("user", 3.5), ("idle", 10.0)],
            memory_total: Some(8.0),
            memory_available: Some(4.0),
            datadir_fs: Some(FsSpace {
                size: 100.0,
                avail: 40.0,
            }),
            datadir_disk: None,
            agent_resident: Some(1e6),
            agent_cpu: Some((0.5, 0.25)),
        };
        let fams = families("main", "db1", &sample);
        let get = |n: &str| fams.iter().find(|f| f.name == n);
        let id = [("cluster", "main"), ("host", "db1")];
        let cpu = get("dbfleet_host_cpu_seconds_total").unwrap();
        assert_eq!(cpu.kind, Kind::Counter);
        assert_eq!(cpu.value(&[id[0], id[1], ("mode", "user")]), Some(3.5));
        assert_eq!(
            get("dbfleet_datadir_filesystem_avail_bytes")
                .unwrap()
                .value(&id),
            Some(40.0)
        );
        assert_eq!(
            get("dbfleet_agent_cpu_seconds_total")
                .unwrap()
                .value(&[("mode", "system")]),
            Some(0.25)
        );
        assert!(get("dbfleet_datadir_disk_read_bytes_total").is_none());
        let bare = families("main", "db1", &HostSample::default());
        assert!(bare.is_empty(), "{bare:?}");
    }

    #[test]
    fn this_host_reads_plausibly() {
        let dir = std::env::temp_dir();
        let s = read(Some(&dir));
        assert!(s.cpu.iter().any(|(m, v)| *m == "user" && *v > 0.0), "{s:?}");
        assert!(s.memory_total > s.memory_available, "{s:?}");
        let fs = s.datadir_fs.expect("statvfs of the temp dir");
        assert!(fs.size >= fs.avail && fs.avail > 0.0, "{fs:?}");
        assert!(s.agent_resident.is_some_and(|r| r > 0.0), "{s:?}");
        assert!(s.agent_cpu.is_some(), "{s:?}");
    }
}
