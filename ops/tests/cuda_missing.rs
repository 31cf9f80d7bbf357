//! `--executor cuda` where it cannot run: the real `strata` binary exits non-zero with one
//! `error: …` line that names what is missing — a usable GPU (no device, or no CUDA library),
//! or in a build without the `cuda` feature the feature — and never panics.
//!
//! Where a GPU is present these checks do not apply: each test says so and passes (the GPU
//! tests proper run on the device machine).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the error line must name.
#[cfg(feature = "cuda")]
const MISSING: &str = "no usable GPU";
#[cfg(not(feature = "cuda"))]
const MISSING: &str = "without the `cuda` feature";

/// How long a failing command may take (it fails before loading anything).
const EXIT_WAIT: Duration = Duration::from_secs(120);

/// `Some(why)` when a GPU is usable here, so the checks do not apply.
fn gpu_here() -> Option<String> {
    #[cfg(feature = "cuda")]
    if let Ok(info) = strata_node::exec::cuda::probe(0) {
        return Some(format!("GPU {} ({}) is usable", info.ordinal, info.name));
    }
    None
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("strata-cuda-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `strata args…` with its output in `dir`, waiting at most [`EXIT_WAIT`] for it to exit;
/// returns (success, stderr).
fn run(dir: &Path, args: &[&str]) -> (bool, String) {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn strata");
    let deadline = Instant::now() + EXIT_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "strata {args:?} still ran after {EXIT_WAIT:?}:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err).expect("stderr");
    (status.success(), stderr)
}

/// The contract of every cuda error path.
fn assert_one_clear_error(what: &str, ok: bool, stderr: &str) {
    assert!(!ok, "{what} succeeded without a GPU:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{what}: want one error line:\n{stderr}");
    assert!(
        errors[0].contains(MISSING) && errors[0].contains("cuda"),
        "{what}: the error line should name {MISSING:?}:\n{stderr}"
    );
    eprintln!("{what}: {}", errors[0]);
}

#[test]
fn a_cuda_node_without_a_gpu_exits_with_one_error_line() {
    if let Some(why) = gpu_here() {
        eprintln!("skipped: {why}; this test checks the error path where none is");
        return;
    }
    let dir = TempDir::new("node");
    let certs = dir.0.join("certs");
    let certs_arg = certs.display().to_string();
    let (ok, stderr) = run(
        &dir.0,
        &["certs", "init", "--dir", &certs_arg, "--nodes", "node-1"],
    );
    assert!(ok, "strata certs init:\n{stderr}");
    let config = dir.0.join("node-1.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"node-1\"\nlisten = \"127.0.0.1:0\"\nmodel = \"tiny\"\nexecutor = \"cuda\"\n\
             \n[tls]\ndir = {certs_arg:?}\n"
        ),
    )
    .expect("config");
    let config_arg = config.display().to_string();
    let (ok, stderr) = run(&dir.0, &["node", "--config", &config_arg]);
    assert_one_clear_error("strata node", ok, &stderr);
}

#[test]
fn bench_engine_on_cuda_without_a_gpu_exits_with_one_error_line() {
    if let Some(why) = gpu_here() {
        eprintln!("skipped: {why}; this test checks the error path where none is");
        return;
    }
    let dir = TempDir::new("bench");
    let (ok, stderr) = run(
        &dir.0,
        &["bench", "engine", "--executor", "cuda", "--requests", "1"],
    );
    assert_one_clear_error("strata bench engine", ok, &stderr);
}

#[test]
fn up_on_cuda_without_a_gpu_exits_before_starting_anything() {
    if let Some(why) = gpu_here() {
        eprintln!("skipped: {why}; this test checks the error path where none is");
        return;
    }
    let dir = TempDir::new("up");
    let data = dir.0.join("data");
    let data_arg = data.display().to_string();
    let (ok, stderr) = run(
        &dir.0,
        &[
            "up",
            "--executor",
            "cuda",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            &data_arg,
        ],
    );
    assert_one_clear_error("strata up", ok, &stderr);
    assert!(
        !stderr.contains("starting router"),
        "strata up started members:\n{stderr}"
    );
    assert!(!data.join("certs").exists(), "strata up wrote certificates");
}
