//! A process whose clock disagrees with AWS's stops vending: the real binary with
//! its clock shifted by libfaketime (Debian's `faketime` package), against the
//! emulator, whose `Date` headers keep the real time.

use crate::support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::Emulator;

/// libfaketime from Debian's `faketime` package (the test set-up installs it).
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("faketime/libfaketime.so.1"))
        .find(|path| path.exists());
    found.expect("libfaketime is not installed: apt-get install faketime")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_whose_clock_is_off_answers_503_clock_skew_until_it_agrees_again() {
    let emulator = Emulator::start();
    let shift = emulator.dir.path().join("faketime");
    std::fs::write(&shift, "-30s").unwrap();
    let lib = libfaketime();
    let server = emulator.serve(&[
        ("LD_PRELOAD", lib.to_str().unwrap()),
        ("FAKETIME_TIMESTAMP_FILE", shift.to_str().unwrap()),
        ("FAKETIME_CACHE_DURATION", "1"),
        // Tokio's timers and the SDK's backoff keep the real monotonic clock.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("VENDING_EXPIRY_MARGIN", "60s"),
        ("VENDING_DEADLINE", "5s"),
    ]);

    // The first vend's AWS calls measure the clock: 30 s behind, beyond the larger
    // of 2 s and a quarter of the 60 s margin.
    let mut answer = server.get("/activation").await;
    if answer.status == 200 {
        answer = server.get("/activation").await;
    }
    assert_eq!(answer.status, 503, "{}", answer.shown());
    assert_eq!(answer.json()["error"]["code"], "ClockSkew");
    assert!(answer.header("retry-after").is_some());
    let log = server.log_text();
    assert!(log.contains("the local clock disagrees with AWS's"), "{log}");
    assert!(log.contains("\"ClockSkewSeconds\""), "{log}");

    // Set right: vending resumes once an AWS answer says so.
    std::fs::write(&shift, "+0s").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = server.get("/activation").await;
        if answer.status == 200 {
            break;
        }
        assert_eq!(answer.json()["error"]["code"], "ClockSkew", "{}", answer.shown());
        assert!(Instant::now() < deadline, "vending never resumed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(server.log_text().contains("vending resumes"));
}

#[tokio::test(flavor = "multi_thread")]
async fn vending_status_shows_how_far_the_local_clock_is_from_aws() {
    let emulator = Emulator::start();
    let shift = emulator.dir.path().join("faketime");
    std::fs::write(&shift, "+20s").unwrap();
    let lib = libfaketime();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vending"))
        .args(["status", "--json"])
        .env_clear()
        .envs(emulator.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("LD_PRELOAD", &lib)
        .env("FAKETIME_TIMESTAMP_FILE", &shift)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .unwrap();
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let skew = status["clock_skew_s"].as_f64().expect("clock_skew_s");
    assert!((18.0..=22.0).contains(&skew), "{skew}");
}
