//! `strata bench transport` end to end: two processes, mutual TLS over QUIC, and TCP, over
//! two streams and two rounds.

use std::process::Command;

#[test]
fn moves_data_over_quic_and_tcp_between_two_processes() {
    let json = std::env::temp_dir().join(format!(
        "strata-bench-transport-{}.json",
        std::process::id()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args([
            "bench",
            "transport",
            "--gib",
            "0.01",
            "--chunk-kib",
            "64",
            "--streams",
            "2",
            "--rounds",
            "2",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run strata");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("QUIC/TCP"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("valid json");
    assert_eq!(report["bytes"], 10_737_418);
    for key in ["quic_gb_s", "tcp_gb_s", "quic_over_tcp"] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {}",
            report[key]
        );
    }
    let rounds = report["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2);
    for r in rounds {
        for key in ["quic_gb_s", "tcp_gb_s", "quic_over_tcp"] {
            assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {r}");
        }
        assert!(r["quic_cpu_s_per_gb"].as_f64().is_some(), "{r}");
    }
    assert_eq!(report["streams"], 2);
    assert_eq!(report["profile"], "loopback");
    let _ = std::fs::remove_file(&json);
}
