//! A `strata up` cluster in a temp dir, for integration tests; stopped on drop.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One cluster at a time in this test binary: each is a dozen processes, and a 2-core CI machine
/// running several at once starves their load reports (instances then look unhealthy).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Cluster {
    child: Child,
    /// Held while the cluster lives (dropped last).
    _turn: std::sync::MutexGuard<'static, ()>,
    pub dir: PathBuf,
    pub url: String,
    /// (id, pid) of every node.
    pub nodes: Vec<(String, u32)>,
    /// Every router replica.
    pub routers: Vec<RouterInfo>,
}

/// A router replica as `cluster.json` lists it.
#[derive(Debug, Clone)]
pub struct RouterInfo {
    pub id: String,
    pub raft_id: u64,
    pub pid: u32,
    /// Its control address (`strata admin --router`).
    pub admin: std::net::SocketAddr,
}

/// How long a cluster may take to come up on a loaded 2-core CI machine.
const UP_WAIT: Duration = Duration::from_secs(180);

impl Cluster {
    /// `strata up --http 127.0.0.1:0` with `extra` arguments; waits for `cluster.json`.
    pub fn start(tag: &str, extra: &[&str]) -> Cluster {
        // A test that panicked while holding the turn poisons it; the turn is still free.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = std::env::temp_dir().join(format!("strata-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = std::fs::File::create(dir.join("up.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["up", "--http", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn strata up");
        let mut cluster = Cluster {
            child,
            _turn: turn,
            dir: dir.clone(),
            url: String::new(),
            nodes: Vec::new(),
            routers: Vec::new(),
        };
        let file = dir.join("cluster.json");
        let deadline = Instant::now() + UP_WAIT;
        let json: Value = loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Ok(v) = serde_json::from_str(&text)
            {
                break v;
            }
            if let Ok(Some(status)) = cluster.child.try_wait() {
                panic!("strata up exited ({status}):\n{}", cluster.log());
            }
            assert!(
                Instant::now() < deadline,
                "no cluster.json within {UP_WAIT:?}:\n{}",
                cluster.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        cluster.url = format!(
            "http://{}",
            json["routers"][0]["http"].as_str().expect("http")
        );
        cluster.routers = json["routers"]
            .as_array()
            .expect("routers")
            .iter()
            .map(|r| RouterInfo {
                id: r["id"].as_str().expect("id").to_string(),
                raft_id: r["raft_id"].as_u64().expect("raft_id"),
                pid: r["pid"].as_u64().expect("pid") as u32,
                admin: r["admin"]
                    .as_str()
                    .expect("admin")
                    .parse()
                    .expect("admin addr"),
            })
            .collect();
        cluster.nodes = json["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| {
                (
                    n["id"].as_str().expect("id").to_string(),
                    n["pid"].as_u64().expect("pid") as u32,
                )
            })
            .collect();
        // Serving starts when the router says it can place a request.
        let addr = cluster.url.trim_start_matches("http://").to_string();
        let up = wait_until(UP_WAIT, || ready(&addr));
        assert!(up, "not ready within {UP_WAIT:?}:\n{}", cluster.log());
        cluster
    }

    /// The up log and every member's log.
    pub fn log(&self) -> String {
        let mut out = std::fs::read_to_string(self.dir.join("up.log")).unwrap_or_default();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("logs")) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                out.push_str(&format!("\n--- {} (tail) ---\n", e.path().display()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Runs `strata admin ARGS --data-dir DIR`; (exit success, stdout, stderr).
    pub fn admin(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("admin")
            .args(args)
            .arg("--data-dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run strata admin");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn node_pid(&self, id: &str) -> u32 {
        self.nodes
            .iter()
            .find(|(n, _)| n == id)
            .unwrap_or_else(|| panic!("no node {id} in {:?}", self.nodes))
            .1
    }

    /// Sends SIGTERM to `strata up` and waits (bounded) for it to exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid from cluster.json or our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Whether any thread of the process `pid` is still running. When a multi-threaded process is
/// killed its group leader turns zombie as soon as it exits, while its other threads may still be
/// exiting with the process's files (its listening sockets) open; the process is gone once every
/// thread left in `/proc/{pid}/task` is a zombie or dead.
pub fn alive(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // The state is the field after the parenthesised command name.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// `GET /ready` at `addr` answers 200 (a blocking HTTP/1.1 request, bounded by timeouts).
fn ready(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let limit = Some(Duration::from_secs(2));
    let _ = s.set_read_timeout(limit);
    let _ = s.set_write_timeout(limit);
    let request = format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 12];
    s.write_all(request.as_bytes()).is_ok()
        && s.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.1 200")
}

/// Waits until `cond` holds, at most `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A streamed completion: its SSE `data:` payloads (without `[DONE]`), whether `[DONE]` came,
/// and the response headers.
pub struct Streamed {
    pub status: u16,
    /// The start of the body when the status is not 200 (what the error said), else empty.
    pub error: String,
    pub instance: String,
    pub events: Vec<Value>,
    pub done: bool,
}

impl Streamed {
    /// The concatenated `choices[0].text` (completions) or `choices[0].delta.content` (chat).
    pub fn text(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| {
                let c = &e["choices"][0];
                c["text"].as_str().or(c["delta"]["content"].as_str())
            })
            .collect()
    }
}

/// Splits an SSE body into its `data:` payloads.
pub fn parse_sse(body: &str) -> (Vec<Value>, bool) {
    let mut events = Vec::new();
    let mut done = false;
    for block in body.split("\n\n") {
        for line in block.lines() {
            if let Some(data) = line.strip_prefix("data: ") {
                if data == "[DONE]" {
                    done = true;
                } else {
                    events.push(
                        serde_json::from_str(data)
                            .unwrap_or_else(|e| panic!("bad SSE json {data:?}: {e}")),
                    );
                }
            }
        }
    }
    (events, done)
}
