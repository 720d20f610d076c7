//! Which replica connections to this mysqld are alive, from the kernel's
//! TCP table.
//!
//! A binlog dump thread outlives its replica when the network is cut: the
//! primary's kernel keeps retransmitting the heartbeats for many minutes
//! before it gives up, and only then does mysqld end the thread. A primary
//! deciding whether it is cut off (the self-fence rule) therefore counts a
//! replica only while its connection is established and the replica
//! acknowledges what it is sent: a live replica acknowledges every
//! heartbeat within a round trip; for a cut-off one the kernel starts
//! retransmitting (or probing, when a firewall drops the packets locally)
//! within a second of the next heartbeat. The replica's
//! `MASTER_HEARTBEAT_PERIOD` (by default half its `slave_net_timeout`)
//! therefore bounds how soon a cut is seen here.
//!
//! A connection the table does not show (another network namespace, no
//! `/proc`) counts as dead, so the self-fence errs towards fencing: the
//! coordinator's proof relies on a cut-off primary fencing itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const ESTABLISHED: u8 = 0x01;

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Socket {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
    /// Retransmission timeouts in a row (the peer stopped acknowledging).
    retransmits: u32,
    /// Probes in a row: data the kernel could not send at all (a local
    /// drop) or a peer that stopped taking data (zero window).
    probes: u32,
}

impl Socket {
    fn alive(&self) -> bool {
        self.state == ESTABLISHED && self.retransmits == 0 && self.probes == 0
    }
}

/// The IPv4 form of a v4-mapped IPv6 address, so both tables compare.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// `0100007F:0CEA` (IPv4) or 32 hex digits and a port (IPv6): the address
/// words are printed as native-endian 32-bit integers.
fn parse_address(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(canonical(SocketAddr::new(ip, port)))
}

fn parse_table(text: &str) -> Vec<Socket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(Socket {
                local: parse_address(f.get(1)?)?,
                remote: parse_address(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                retransmits: u32::from_str_radix(f.get(6)?, 16).ok()?,
                probes: f.get(8)?.parse().ok()?,
            })
        })
        .collect()
}

/// Where a replica connects from, as the processlist `HOST` says it.
#[derive(Debug, PartialEq, Eq)]
enum Client {
    /// `127.0.0.1:45678` or `[::1]:45678`.
    Address(SocketAddr),
    /// `db2.example:45678` (mysqld resolves names): the port alone
    /// identifies the connection among those to mysqld's port.
    Port(u16),
    /// `localhost`: a Unix socket, which no network cut can reach.
    Socket,
}

fn client(host: &str) -> Option<Client> {
    if let Ok(a) = host.parse::<SocketAddr>() {
        return Some(Client::Address(canonical(a)));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Some(Client::Socket);
    }
    let (_, port) = host.rsplit_once(':')?;
    port.parse().ok().map(Client::Port)
}

/// How many of the replicas connected from `hosts` (processlist `HOST` of
/// the binlog dump threads) to mysqld's `port` are alive, judged by `table`
/// (the concatenated TCP tables). Unix-socket replicas cannot be cut off
/// by the network and always count.
fn count_alive(table: &[Socket], port: u16, hosts: &[String]) -> u32 {
    let alive = |matches: &dyn Fn(&Socket) -> bool| {
        table
            .iter()
            .any(|s| s.local.port() == port && matches(s) && s.alive())
    };
    hosts
        .iter()
        .filter(|h| match client(h) {
            None => false,
            Some(Client::Socket) => true,
            Some(Client::Address(peer)) => alive(&|s| s.remote == peer),
            Some(Client::Port(p)) => alive(&|s| s.remote.port() == p),
        })
        .count() as u32
}

/// [`count_alive`] against this host's TCP tables.
pub fn alive_replicas(port: u16, hosts: &[String]) -> u32 {
    if hosts.is_empty() {
        return 0;
    }
    let mut table = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            table.extend(parse_table(&text));
        }
    }
    count_alive(&table, port, hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_of_both_families_parse_and_mapped_addresses_compare() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: 0300007F:0CEA 0100007F:B26E 01 00000000:00000000 00:00000000 00000000   106        0 1 1 0 20 4 30 10 -1\n   \
             1: 0300007F:0CEA 0100007F:B270 01 0000002D:00000000 01:00000041 00000003   106        0 2 2 0 20 4 30 10 -1\n   \
             2: 0300007F:0CEA 0100007F:B271 01 00000002:00000000 04:0000009E 00000000     0        3 821210 2 0 20\n";
        let t = parse_table(v4);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].local, "127.0.0.3:3306".parse().unwrap());
        assert_eq!(t[0].remote, "127.0.0.1:45678".parse().unwrap());
        // retransmitting; probing data a local firewall drops
        assert!(t[0].alive() && !t[1].alive() && !t[2].alive());
        // ::ffff:127.0.0.1 as printed in tcp6 on a little-endian host
        let v6 = "header\n   0: 00000000000000000000000000000000:0CEA 0000000000000000FFFF00000100007F:B272 01 00000000:00000000 00:00000000 00000000 106 0 3\n";
        let t6 = parse_table(v6);
        if cfg!(target_endian = "little") {
            assert_eq!(t6[0].remote, "127.0.0.1:45682".parse().unwrap());
        }
    }

    #[test]
    fn a_live_loopback_connection_is_found_in_this_kernel_tables() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_accepted, _) = server.accept().unwrap();
        let peer = client.local_addr().unwrap().to_string();
        assert_eq!(alive_replicas(port, std::slice::from_ref(&peer)), 1);
        assert_eq!(alive_replicas(port.wrapping_add(1), &[peer]), 0);
    }

    #[test]
    fn only_acknowledging_established_replicas_and_sockets_count() {
        let t = parse_table(
            "h\n 0: 0300007F:0CEA 0100007F:B26E 01 0:0 0:0 00000000 0 0 1\n \
             1: 0300007F:0CEA 0100007F:B270 01 0:0 0:0 00000002 0 0 2\n \
             2: 0300007F:0CEA 0100007F:B271 08 0:0 0:0 00000000 0 0 3\n",
        );
        let hosts = |h: &[&str]| h.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(count_alive(&t, 3306, &hosts(&["127.0.0.1:45678"])), 1);
        // retransmitting (cut off), closing, unknown, other port
        assert_eq!(count_alive(&t, 3306, &hosts(&["127.0.0.1:45680"])), 0);
        assert_eq!(count_alive(&t, 3306, &hosts(&["127.0.0.1:45681"])), 0);
        assert_eq!(count_alive(&t, 3306, &hosts(&["127.0.0.9:1"])), 0);
        assert_eq!(count_alive(&t, 3307, &hosts(&["127.0.0.1:45678"])), 0);
        assert_eq!(count_alive(&t, 3306, &hosts(&["localhost", "garbage"])), 1);
        // a resolved name: the client port identifies the connection
        assert_eq!(count_alive(&t, 3306, &hosts(&["db2.example:45678"])), 1);
        assert_eq!(count_alive(&t, 3306, &hosts(&["db2.example:45680"])), 0);
    }
}
