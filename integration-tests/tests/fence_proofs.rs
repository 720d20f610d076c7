//! Fence proofs are positive evidence: whatever the agent's `pid_file`
//! says (a typo, a file it cannot read, another live program's pid, a
//! stale pid), a hung primary is fenced only by killing the process that
//! holds its InnoDB lock, proven gone afterwards, and nothing else is ever
//! signalled. Each case hangs db1's mysqld (SIGSTOP) while the writer
//! writes and a client holds an open transaction on it, on a primary whose
//! semi-sync may fall back to asynchronous (so a primary that was wrongly
//! called stopped would commit on its own when resumed).

use std::process::{Child, Command};
use std::time::Duration;

use dbfleet_cli::sandbox::mariadb::{APP_DATABASE, APP_USER};
use dbfleet_integration_tests::TestFleet;
use dbfleet_integration_tests::failover::{
    check_witnesses, evidence_of, loaded_fleet, new_primary, semi_sync_may_fall_back,
};
use dbfleet_integration_tests::workload::TABLE;
use mysql_async::prelude::Queryable;

/// What db1's agent is told its mysqld's pid file is.
enum PidFile {
    /// A path where nothing is (a typo).
    Missing,
    /// A file the agent's user cannot read.
    Unreadable,
    /// A file naming another live program.
    OtherProgram,
    /// A file naming a process that has ended.
    Stale,
}

/// A live program that is not mysqld: it must survive the fence.
fn bystander() -> Child {
    Command::new("sleep").arg("600").spawn().expect("sleep")
}

/// Restarts db1's agent with `pid_file` pointing where `case` says.
async fn point_pid_file(fleet: &mut TestFleet, case: &PidFile, bystander: &Child) {
    let path = fleet.dir.join("pid-file-under-test");
    let _ = std::fs::remove_file(&path);
    match case {
        PidFile::Missing => {}
        PidFile::Unreadable => {
            let pid = fleet.pid("mariadbd-db1").expect("db1's mysqld runs");
            assert!(
                fleet.service_user.is_some() || !nix::unistd::geteuid().is_root(),
                "the agent runs unprivileged, so a mode 000 file is unreadable to it"
            );
            std::fs::write(&path, format!("{pid}\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o000))
                .unwrap();
        }
        PidFile::OtherProgram => {
            std::fs::write(&path, format!("{}\n", bystander.id())).unwrap();
        }
        PidFile::Stale => {
            let mut ended = Command::new("true").spawn().unwrap();
            let pid = ended.id();
            ended.wait().unwrap();
            std::fs::write(&path, format!("{pid}\n")).unwrap();
        }
    }
    fleet
        .restart_agent_with(
            "db1",
            "pid_file",
            &format!("pid_file = {:?}", path.display().to_string()),
        )
        .await;
}

async fn a_hung_primary_is_fenced_by_its_lock_holder_whatever_its_pid_file_says(case: PidFile) {
    let (mut fleet, writer, sampler) = loaded_fleet("").await;
    semi_sync_may_fall_back(&fleet).await;
    let mut bystander = bystander();
    point_pid_file(&mut fleet, &case, &bystander).await;

    // A client with an open transaction on db1: were db1 called stopped
    // while it was only hung, its COMMIT would succeed once it resumes.
    let db1 = fleet.server("db1").unwrap().clone();
    let mut held = mysql_async::Conn::new(
        db1.tcp_opts(APP_USER, &fleet.credentials.app)
            .db_name(Some(APP_DATABASE)),
    )
    .await
    .unwrap();
    held.query_drop("BEGIN").await.unwrap();
    held.query_drop(format!("INSERT INTO {TABLE} (id) VALUES (900000001)"))
        .await
        .unwrap();

    let mysqld = nix::unistd::Pid::from_raw(fleet.pid("mariadbd-db1").unwrap() as i32);
    nix::sys::signal::kill(mysqld, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let view = new_primary(&fleet, "db1", &["db2", "db3"]).await;
    // Resume it, in case it still exists: nothing it does may count now.
    let _ = nix::sys::signal::kill(mysqld, nix::sys::signal::Signal::SIGCONT);
    let commit = tokio::time::timeout(Duration::from_secs(30), held.query_drop("COMMIT")).await;
    assert!(
        !matches!(commit, Ok(Ok(()))),
        "the old primary acknowledged a commit after the failover"
    );

    let proof = evidence_of(&fleet, "failover-completed");
    assert!(
        proof.contains("killed the unresponsive mysqld") && proof.contains("ibdata1"),
        "the agent killed the process holding db1's InnoDB lock and proved it gone: {proof}"
    );
    assert_eq!(
        bystander.try_wait().unwrap(),
        None,
        "the program a pid file named is untouched"
    );
    check_witnesses(&fleet, writer, sampler, &view.primary).await;
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[tokio::test]
async fn a_missing_pid_file_is_no_proof_and_the_hung_primary_is_killed_by_its_lock() {
    a_hung_primary_is_fenced_by_its_lock_holder_whatever_its_pid_file_says(PidFile::Missing).await;
}

#[tokio::test]
async fn an_unreadable_pid_file_is_no_proof_and_the_hung_primary_is_killed_by_its_lock() {
    a_hung_primary_is_fenced_by_its_lock_holder_whatever_its_pid_file_says(PidFile::Unreadable)
        .await;
}

#[tokio::test]
async fn a_pid_file_naming_another_program_never_gets_it_killed() {
    a_hung_primary_is_fenced_by_its_lock_holder_whatever_its_pid_file_says(PidFile::OtherProgram)
        .await;
}

#[tokio::test]
async fn a_stale_pid_file_is_no_proof_and_the_hung_primary_is_killed_by_its_lock() {
    a_hung_primary_is_fenced_by_its_lock_holder_whatever_its_pid_file_says(PidFile::Stale).await;
}
