//! Reading `/metrics` as a scraper does: plain HTTP, or mutual TLS with a
//! certificate of the fleet CA; and picking samples out of the text.

use std::path::Path;

use dbfleet_common::certs::{self, LeafRequest};
use dbfleet_common::identity::Role;
use dbfleet_common::tls::{TlsContext, TlsPaths, connect_tls};

/// `GET /metrics` over plain HTTP/1.0 (so the body is not chunked);
/// panics unless the answer is 200.
pub fn scrape(address: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(address)
        .unwrap_or_else(|e| panic!("cannot connect to {address}: {e}"));
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
        "{out}"
    );
    out
}

/// The value of the first sample of `name` in a scrape whose labels
/// include every `labels` pair.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        if all { value.parse().ok() } else { None }
    })
}

/// `GET /metrics` over mutual TLS with `client`'s certificate from the
/// server `name` of `role` at `address`: the whole answer, status line
/// and all, whatever the status.
pub async fn tls_scrape(client: &TlsPaths, address: &str, role: Role, name: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ctx = TlsContext::load(client).unwrap();
    let mut s = connect_tls(&ctx, address, role, Some(name))
        .await
        .unwrap_or_else(|e| panic!("TLS to {address}: {e}"));
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    // the answer is complete when the server closes; how it closes
    // (close_notify or not) does not matter here
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A client certificate of `role` named `name` from the CA of the sandbox
/// in `fleet_dir`, as Prometheus or another scraper would hold it.
pub fn scraper_certificate(fleet_dir: &Path, role: Role, name: &str) -> TlsPaths {
    let certs_dir = fleet_dir.join("certs");
    let issued = fleet_dir.join("scrapers");
    std::fs::create_dir_all(&issued).unwrap();
    let files = certs::issue_leaf(&certs_dir, &issued, &LeafRequest::new(role, name)).unwrap();
    TlsPaths {
        ca: certs_dir.join(certs::CA_CERT),
        cert: files.cert,
        key: files.key,
    }
}

/// What a plain HTTP `GET /metrics` to `address` got back: nothing from
/// a TLS-only endpoint (it may hang up before the whole request is
/// written: a broken pipe is an answer too).
pub fn plain_http_answer(address: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut plain = std::net::TcpStream::connect(address).unwrap();
    let _ = write!(plain, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    answer
}
