//! A users file mounted the way Kubernetes mounts a Secret: the file is a symlink through
//! `..data`, itself a symlink to a timestamped directory, and an update writes a new directory
//! and renames a new `..data` link over the old one (then deletes the old directory). Five such
//! updates in a row: each is picked up within 2 s (the new user is let in, the one it replaced
//! is not), while a client using an unchanged user never sees a failed request.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::Request;

fn basic_get(user: &str, pw: &str) -> Request<TestBody> {
    Request::get("/api/ok")
        .header("host", "localhost")
        .header("authorization", basic(user, pw))
        .body(empty())
        .unwrap()
}

/// Writes version `n` of the Secret (alice and `user-n`) as the kubelet does: a new
/// timestamped directory, a new `..data` link renamed over the old, the old directory removed.
fn update_secret(secret: &Path, template: &Path, n: u32) {
    let dir = secret.join(format!("..2026_12_03_00_00_{n:02}.{n}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(template, dir.join("users.htpasswd")).unwrap();
    adduser(&dir.join("users.htpasswd"), &format!("user-{n}"), "pw");
    let old = std::fs::read_link(secret.join("..data")).ok();
    let tmp = secret.join("..data_tmp");
    symlink(dir.file_name().unwrap(), &tmp).unwrap();
    std::fs::rename(&tmp, secret.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(secret.join(old)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn five_secret_updates_in_a_row_are_each_picked_up_within_two_seconds_without_a_failed_request() {
    let dir = TempDir::new("secret-reload");
    let template = dir.path().join("alice.htpasswd");
    adduser(&template, "alice", "correct horse");
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    update_secret(&secret, &template, 0);
    symlink("..data/users.htpasswd", secret.join("users.htpasswd")).unwrap();

    let up = Echo::start().await;
    // The new users' tries before a swap lands are refusals: no lockout for them.
    let g = Guard::start(&[
        "--upstream",
        &up.authority(),
        "--users",
        secret.join("users.htpasswd").to_str().unwrap(),
        "--lockout-failures",
        "0",
    ]);
    let c = g.client();
    assert_eq!(c.send(basic_get("user-0", "pw")).await.status(), 200);

    // alice, all along: every request must pass.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let steady = {
        let (c, stop, sent, failed) = (g.client(), stop.clone(), sent.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let status = c.send(basic_get("alice", "correct horse")).await.status();
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    for n in 1..=5 {
        update_secret(&secret, &template, n);
        let swapped = Instant::now();
        let user = format!("user-{n}");
        loop {
            if c.send(basic_get(&user, "pw")).await.status() == 200 {
                break;
            }
            assert!(
                swapped.elapsed() < Duration::from_secs(2),
                "update {n} not picked up within 2 s:\n{}",
                g.stderr.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = swapped.elapsed();
        // The user the update replaced is gone with it.
        let before = format!("user-{}", n - 1);
        assert_eq!(
            c.send(basic_get(&before, "pw")).await.status(),
            401,
            "{before} after update {n}"
        );
        eprintln!("update {n} picked up in {took:?}");
    }
    stop.store(true, Ordering::Relaxed);
    steady.await.unwrap();
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 20, "the steady client ran: {sent} requests");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {sent} requests by an unchanged user"
    );
}
