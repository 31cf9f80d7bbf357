//! A cluster member running as its own OS process: spawned from this binary, its first stdout
//! line announces readiness, its output goes to a log file, and it dies with its parent.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// A running member.
pub struct Member {
    pub id: String,
    pub pid: u32,
    /// The address its ready line announced (the word after ` on `).
    pub addr: String,
    /// Its control address, for a router (the word after ` control `).
    pub control: Option<String>,
    pub log: PathBuf,
    pub child: Child,
}

/// Starts `strata <args>` as member `id`, logging to `log`, and waits (at most `timeout`) for a
/// stdout line containing ` on ADDR` (and, for a router, ` control ADDR`).
pub async fn spawn(
    id: &str,
    args: &[String],
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<Member> {
    let exe = std::env::current_exe().context("cannot find the strata binary")?;
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file.try_clone()?))
        .kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent;
    // it makes the kernel send SIGTERM to the member when `strata up` dies, even by SIGKILL.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("cannot start {id}"))?;
    let pid = child.id().context("the member exited at once")?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(timeout, async {
        while let Some(line) = lines.next_line().await? {
            if line.contains(" on ") {
                return Ok::<_, std::io::Error>(Some(line));
            }
        }
        Ok(None)
    })
    .await;
    let line = match ready {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) | Ok(Err(_)) => {
            let status = child.wait().await.ok();
            bail!(
                "{id} exited before it was ready ({}); the end of {}:\n{}",
                status.map_or("unknown status".into(), |s| s.to_string()),
                log.display(),
                tail(log, 5)
            );
        }
        Err(_) => bail!(
            "{id} was not ready within {timeout:?}; see {}",
            log.display()
        ),
    };
    let addr = word_after(&line, " on ")
        .trim_start_matches("http://")
        .to_string();
    let control = Some(word_after(&line, " control ").to_string()).filter(|c| !c.is_empty());
    // The rest of stdout goes to the log too.
    let mut log_out = tokio::fs::OpenOptions::new().append(true).open(log).await?;
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log_out.write_all(format!("{line}\n").as_bytes()).await;
        }
    });
    Ok(Member {
        id: id.to_string(),
        pid,
        addr,
        control,
        log: log.to_path_buf(),
        child,
    })
}

impl Member {
    /// Asks the member to stop (SIGTERM) and waits up to `grace`, then kills it.
    pub async fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on a pid this process spawned and has not reaped yet.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            eprintln!("{} did not stop within {grace:?}; killing it", self.id);
            let _ = self.child.kill().await;
        }
    }
}

/// The word that follows `key` in `line` (empty if none).
fn word_after<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_once(key)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_default()
}

/// The last `n` lines of a log file (empty when unreadable).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
