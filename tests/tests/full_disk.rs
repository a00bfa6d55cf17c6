//! Running out of room (SPEC section 13), on a real full filesystem: the
//! built binary's data dir is a 48 MiB tmpfs that this test mounts (it runs
//! as root, as the project's CI does) and unmounts afterwards. The disk is
//! filled until submissions get 503; the gateway stays up, answers reads and
//! says why on `/healthz` and once in its log; once space is freed,
//! submissions succeed again by themselves and every form answered 201 is
//! delivered, and the store opens again after a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use repeatd_tests::daemon::Launch;
use repeatd_tests::{Answer, Receiver, TempDir, eventually, generated_form, repeater};

const WAIT: Duration = Duration::from_secs(60);

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn tmpfs(path: &Path, size: &str) -> Mounted {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mounting a tmpfs on {} failed ({status}): this test needs root",
            path.display()
        );
        Mounted(path.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem of `dir` with `dir/filler` until a write fails, then
/// frees `leave` bytes of it again.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5a_u8; 1 << 16];
    let mut written = 0u64;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    let _ = file.sync_all();
    let kept = written.saturating_sub(leave);
    file.set_len(kept).unwrap();
    file.sync_all().unwrap();
    path
}

/// A form of about 16 KiB, so that the disk fills in a few hundred.
fn big_form(n: usize) -> (String, Vec<u8>) {
    let form_id = format!("full-disk-form-{n}");
    let xml = String::from_utf8(generated_form(
        &form_id,
        &format!("full-disk-case-{n}"),
        "visit",
    ))
    .unwrap()
    .replace(
        "<n0:visit>1</n0:visit>",
        &format!(
            "<n0:visit>1</n0:visit><n0:notes>{}</n0:notes>",
            "x".repeat(16 << 10)
        ),
    );
    (form_id, xml.into_bytes())
}

#[tokio::test]
async fn a_full_disk_refuses_with_503_then_recovers_by_itself_and_loses_nothing() {
    let dir = TempDir::new("full-disk");
    let data = dir.path().join("data");
    let mount = Mounted::tmpfs(&data, "48m");
    let receiver = Receiver::start().await;
    receiver.plan("/in", vec![Answer::Status(200)]);
    let config = format!(
        "[[domains]]\nname = \"demo\"\n\n[[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword = \"pw\"\n\n\
         [[connections]]\ndomain = \"demo\"\nname = \"remote\"\nurl = \"{}\"\nauth = {{ type = \"none\" }}\n\n{}",
        receiver.url("/in"),
        repeater("forms", "form", "remote", "form-xml", ""),
    );
    let launch = Launch::in_dir(&dir, &config);
    let daemon = launch.start().await.expect("the gateway starts");

    let filler = fill(&mount.0, 2 << 20);
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut retry_after = None;
    for n in 0..2_000 {
        let (form_id, xml) = big_form(n);
        let response = daemon
            .http()
            .post(daemon.url("/a/demo/receiver"))
            .basic_auth("danny", Some("pw"))
            .header("content-type", "text/xml")
            .body(xml)
            .send()
            .await
            .expect("the gateway answers");
        match response.status().as_u16() {
            201 => accepted.push(form_id),
            503 => {
                refused += 1;
                retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                if refused >= 5 {
                    break;
                }
            }
            other => panic!(
                "form {n}: {other} {}",
                response.text().await.unwrap_or_default()
            ),
        }
    }
    assert!(
        refused >= 5,
        "the disk never filled: {} forms taken",
        accepted.len()
    );
    assert!(
        !accepted.is_empty(),
        "some forms fit before the disk was full"
    );
    assert_eq!(
        retry_after.as_deref(),
        Some("5"),
        "a 503 says when to come back"
    );

    // The gateway stays up: reads work and /healthz says why.
    let (status, health) = daemon.get("/healthz").await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["store"]["writable"], false, "{health}");
    assert!(
        health["store"]["problem"]
            .as_str()
            .is_some_and(|problem| !problem.is_empty()),
        "{health}"
    );
    let (status, form) = daemon
        .get(&format!("/api/v1/domains/demo/forms/{}", accepted[0]))
        .await;
    assert_eq!(status, 200, "an accepted form is still read: {form}");
    let (status, listed) = daemon.get("/api/v1/domains/demo/records?limit=5").await;
    assert_eq!(status, 200, "{listed}");
    // The gateway's log reaches the test through a pipe read on its own
    // task: wait for the line before counting it.
    daemon
        .wait_log("the store cannot write", Duration::from_secs(10))
        .await;
    let log = daemon.log();
    assert_eq!(
        log.matches("the store cannot write").count(),
        1,
        "the log says why once, not once per request:\n{log}"
    );

    // Space comes back: the gateway writes again by itself.
    std::fs::remove_file(&filler).unwrap();
    let mut n = 10_000;
    let retaken = eventually("a submission is taken again", WAIT, || {
        n += 1;
        let (form_id, xml) = big_form(n);
        let daemon = &daemon;
        async move {
            let (status, body) = daemon.submit("demo", &xml, None).await;
            if status == 201 {
                Ok(form_id)
            } else {
                Err(format!("{status} {body}"))
            }
        }
    })
    .await;
    accepted.push(retaken);
    let (status, health) = daemon.get("/healthz").await;
    assert_eq!(status, 200, "{health}");
    assert!(daemon.log().contains("the store writes again"));

    // Every form answered 201 reaches the remote, and its record succeeds.
    eventually("every accepted form is delivered", WAIT, || {
        let receiver = &receiver;
        let accepted = &accepted;
        async move {
            let bodies: Vec<String> = receiver.requests("/in").iter().map(|r| r.text()).collect();
            let missing: Vec<&String> = accepted
                .iter()
                .filter(|id| !bodies.iter().any(|body| body.contains(id.as_str())))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("{} not delivered: {missing:?}", missing.len()))
            }
        }
    })
    .await;
    eventually("every record succeeded", WAIT, || {
        let daemon = &daemon;
        let n_accepted = accepted.len();
        async move {
            let records = daemon.records("demo", "").await;
            let succeeded = records.iter().filter(|r| r["state"] == "succeeded").count();
            if succeeded == n_accepted && records.len() == n_accepted {
                Ok(())
            } else {
                Err(format!(
                    "{succeeded} of {} records succeeded, {n_accepted} forms accepted",
                    records.len()
                ))
            }
        }
    })
    .await;

    // The file opens again after a restart, with everything in it.
    daemon.stop().await.expect("a graceful stop");
    let restarted = launch.start().await.expect("the gateway starts again");
    for form_id in &accepted {
        let (status, _) = restarted
            .get(&format!("/api/v1/domains/demo/forms/{form_id}"))
            .await;
        assert_eq!(status, 200, "form {form_id} after the restart");
    }
    restarted.stop().await.expect("a graceful stop");
    drop(mount);
}
