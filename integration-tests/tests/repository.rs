//! The backup repository's promises, kept alike by a directory and by a
//! real S3-compatible server (s3s-fs): a streamed file is visible only
//! once finished and leaves nothing when abandoned, small files are
//! replaced whole, listings and removals work by key prefix; a bucket
//! that stops answering fails requests with an error naming the object,
//! and works again when it answers; bad settings are refused naming the
//! fix.

use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

use dbfleet_agent::repository::{Repository, S3Config};
use dbfleet_integration_tests::Slot;
use dbfleet_integration_tests::s3::{BUCKET, S3Server};

fn s3_config(server: &S3Server, timeout: Duration) -> S3Config {
    S3Config {
        endpoint: Some(server.endpoint.clone()),
        region: "us-east-1".into(),
        access_key_id_file: server.key_id_file.clone(),
        secret_access_key_file: server.secret_file.clone(),
        allow_http: true,
        path_style: true,
        part_size_mib: 5,
        request_timeout: timeout,
    }
}

fn s3(server: &S3Server, timeout: Duration) -> Repository {
    Repository::open(
        &format!("s3://{BUCKET}/fleet"),
        Some(&s3_config(server, timeout)),
    )
    .unwrap()
}

/// Bytes that do not compress or repeat, so parts cannot be confused.
fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn contract(r: &Repository) {
    let what = r.describe("");
    assert_eq!(
        r.read("c/backups/a/manifest.json").unwrap_err().kind(),
        ErrorKind::NotFound,
        "{what}"
    );
    r.put("c/backups/a/manifest.json", b"one").unwrap();
    r.put("c/backups/a/manifest.json", b"two").unwrap();
    assert_eq!(r.read("c/backups/a/manifest.json").unwrap(), b"two");
    r.put("c/backups/b/manifest.json", b"b").unwrap();
    assert_eq!(r.list("c/backups").unwrap(), ["a", "b"], "{what}");
    assert_eq!(r.list("c/backups/a").unwrap(), ["manifest.json"]);
    assert!(r.list("c/nothing").unwrap().is_empty());
    assert!(r.exists("c/backups/a").unwrap());
    assert!(!r.exists("c/backups/z").unwrap());

    // 12 MiB: three parts of 5 MiB on the bucket
    let big = pattern(12 << 20);
    let mut w = r.create("c/backups/a/data").unwrap();
    for piece in big.chunks(64 << 10) {
        w.write_all(piece).unwrap();
    }
    assert_eq!(
        r.read("c/backups/a/data").unwrap_err().kind(),
        ErrorKind::NotFound,
        "{what}: not visible before it is finished"
    );
    w.finish().unwrap();
    let mut back = Vec::new();
    r.open_read("c/backups/a/data")
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == big, "{what}: read back as written");

    let mut abandoned = r.create("c/backups/b/data").unwrap();
    abandoned.write_all(&big[..6 << 20]).unwrap();
    drop(abandoned);
    assert_eq!(
        r.list("c/backups/b").unwrap(),
        ["manifest.json"],
        "{what}: an abandoned file leaves nothing"
    );

    let keys = [
        "c/backups/a/manifest.json".to_string(),
        "c/backups/missing".to_string(),
        "c/backups/b/manifest.json".to_string(),
    ];
    let many = r.read_many(&keys);
    assert_eq!(many[0].as_ref().unwrap(), b"two");
    assert_eq!(many[1].as_ref().unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(many[2].as_ref().unwrap(), b"b");

    r.remove("c/backups/missing").unwrap();
    r.remove("c/backups/b/manifest.json").unwrap();
    assert!(!r.exists("c/backups/b").unwrap(), "{what}");
    r.remove_all("c/backups/a").unwrap();
    assert!(!r.exists("c/backups/a").unwrap(), "{what}");
    assert!(r.list("c/backups").unwrap().is_empty(), "{what}");
}

#[test]
fn a_directory_and_a_bucket_keep_the_same_promises() {
    let slot = Slot::claim();
    let dir = Repository::open(&slot.dir.join("repo").to_string_lossy(), None).unwrap();
    contract(&dir);
    let server = S3Server::start(&slot.dir.join("s3"), &slot.ip(250), 9000);
    contract(&s3(&server, Duration::from_secs(30)));
    assert_eq!(
        files_below(&server.objects("fleet")),
        Vec::<std::path::PathBuf>::new(),
        "the bucket holds nothing of the removed backups"
    );
}

/// Every file below `dir` (s3s-fs keeps an object as a file).
fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_hung_bucket_fails_requests_naming_the_object_and_works_again_when_it_answers() {
    let slot = Slot::claim();
    let server = S3Server::start(&slot.dir.join("s3"), &slot.ip(250), 9000);
    let r = s3(&server, Duration::from_secs(1));
    r.put("c/backups/a/manifest.json", b"before").unwrap();
    nix::sys::signal::kill(server.pid(), nix::sys::signal::Signal::SIGSTOP).unwrap();
    let e = r
        .put("c/backups/a/manifest.json", b"while hung")
        .unwrap_err();
    nix::sys::signal::kill(server.pid(), nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(
        e.to_string()
            .contains("s3://dbfleet/fleet/c/backups/a/manifest.json"),
        "{e}"
    );
    r.put("c/backups/a/manifest.json", b"after").unwrap();
    assert_eq!(r.read("c/backups/a/manifest.json").unwrap(), b"after");
}

#[test]
fn bad_settings_are_refused_naming_the_fix() {
    let slot = Slot::claim();
    let server = S3Server::start(&slot.dir.join("s3"), &slot.ip(250), 9000);
    let good = s3_config(&server, Duration::from_secs(5));
    let open =
        |location: &str, cfg: Option<&S3Config>| Repository::open(location, cfg).unwrap_err();

    let e = open("relative/repo", None);
    assert!(e.contains("must be an absolute path"), "{e}");
    let e = open("s3://dbfleet", None);
    assert!(e.contains("no [backup.s3] section"), "{e}");
    let e = open("/srv/repo", Some(&good));
    assert!(e.contains("remove [backup.s3]"), "{e}");
    let e = open(
        "s3://dbfleet",
        Some(&S3Config {
            allow_http: false,
            ..good.clone()
        }),
    );
    assert!(e.contains("set allow_http = true"), "{e}");
    let e = open(
        "s3://dbfleet",
        Some(&S3Config {
            secret_access_key_file: slot.dir.join("no-such-file"),
            ..good.clone()
        }),
    );
    assert!(
        e.contains("secret_access_key_file") && e.contains("no-such-file"),
        "{e}"
    );

    let wrong = slot.dir.join("wrong-secret");
    std::fs::write(&wrong, "not-the-secret").unwrap();
    let r = Repository::open(
        "s3://dbfleet",
        Some(&S3Config {
            secret_access_key_file: wrong,
            ..good
        }),
    )
    .unwrap();
    let e = r.put("c/x", b"x").unwrap_err();
    assert!(e.to_string().contains("s3://dbfleet/c/x"), "{e}");
    assert!(
        !e.to_string().contains("not-the-secret"),
        "the secret stays out of errors: {e}"
    );
}
