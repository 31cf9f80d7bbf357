//! Tests of `NodeConfig` parsing and validation.

use super::*;

fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
    NodeConfig::from_toml_str(text, Path::new("node.toml"))
}

#[test]
fn empty_file_is_the_default_and_valid() {
    let cfg = parse("").unwrap();
    assert_eq!(cfg, NodeConfig::default());
    assert_eq!(cfg.validate(), Ok(()));
    assert_eq!(cfg.member(), "node-1");
    assert_eq!(cfg.model_name(), "tiny");
    assert_eq!(cfg.load_report_ms, 100);
    assert_eq!(cfg.scheduler.mode, Mode::Layerwise);
}

#[test]
fn parses_every_section() {
    let cfg = parse(
        r#"
        id = "node-7"
        listen = "0.0.0.0:0"
        model = "/models/Llama-3.1-8B-Instruct/"
        executor = "sim"
        gpu_mib = 4096
        host_mib = 8192
        block_tokens = 32
        load_report_ms = 50
        seed = 9
        [tls]
        dir = "/etc/strata/certs"
        member = "gpu-box-7"
        [scheduler]
        mode = "baseline"
        max_waiting = 10
        max_seq_tokens = 8192
        stream_decode = "never"
        [limits]
        max_connections = 4
        "#,
    )
    .unwrap();
    assert_eq!(cfg.validate(), Ok(()));
    assert_eq!(cfg.executor, ExecutorKind::Sim);
    assert_eq!(cfg.listen.port(), 0);
    assert_eq!(cfg.member(), "gpu-box-7");
    assert_eq!(cfg.model_name(), "Llama-3.1-8B-Instruct");
    assert_eq!(cfg.scheduler.mode, Mode::Baseline);
    assert_eq!(cfg.scheduler.stream_decode, StreamDecode::Never);
    assert_eq!(cfg.scheduler.max_seq_tokens, Some(8192));
    assert_eq!(
        cfg.scheduler.max_batch_seqs, 256,
        "unset keys keep defaults"
    );
    assert_eq!(cfg.limits.max_connections, 4);
    assert_eq!(cfg.gpu_mib, Some(4096));
    // Round trip through TOML.
    let text = toml::to_string(&cfg).unwrap();
    assert_eq!(parse(&text).unwrap(), cfg);
}

#[test]
fn every_executor_parses_by_name_and_round_trips() {
    for (name, kind) in [
        ("cpu", ExecutorKind::Cpu),
        ("sim", ExecutorKind::Sim),
        ("cuda", ExecutorKind::Cuda),
    ] {
        let cfg = parse(&format!("executor = {name:?}\ngpu_mib = 2048")).unwrap();
        assert_eq!(cfg.executor, kind);
        assert_eq!(kind.name(), name);
        assert_eq!(cfg.validate(), Ok(()));
        let text = toml::to_string(&cfg).unwrap();
        assert!(text.contains(&format!("executor = {name:?}")), "{text}");
        assert_eq!(parse(&text).unwrap(), cfg);
        assert_eq!(name.parse::<ExecutorKind>(), Ok(kind));
    }
    assert!("gpu".parse::<ExecutorKind>().unwrap_err().contains("cuda"));
    // The error names the accepted values.
    let err = parse("executor = \"gpu\"").unwrap_err().to_string();
    assert!(err.contains("cuda") && err.contains("sim"), "{err}");
}

#[test]
fn typos_and_bad_values_are_parse_errors() {
    let err = parse("listn = \"127.0.0.1:1\"").unwrap_err();
    assert!(
        matches!(&err, ConfigError::Parse { reason, .. } if reason.contains("listn")),
        "{err}"
    );
    assert!(matches!(
        parse("executor = \"gpu\""),
        Err(ConfigError::Parse { .. })
    ));
    let err = parse("[scheduler]\nmode = \"fast\"").unwrap_err();
    assert!(err.to_string().contains("layerwise"), "{err}");
    assert!(matches!(
        parse("listen = \"localhost\""),
        Err(ConfigError::Parse { .. })
    ));
}

#[test]
fn validate_names_the_bad_value() {
    let bad = |f: fn(&mut NodeConfig)| {
        let mut cfg = NodeConfig::default();
        f(&mut cfg);
        cfg.validate().unwrap_err()
    };
    assert_eq!(
        bad(|c| c.id = "node 1".into()),
        ConfigError::BadName {
            field: "id",
            value: "node 1".into()
        }
    );
    assert_eq!(
        bad(|c| c.load_report_ms = 0),
        ConfigError::OutOfRange {
            field: "load_report_ms",
            value: 0,
            min: 1,
            max: 60_000
        }
    );
    assert_eq!(
        bad(|c| c.gpu_mib = Some(0)),
        ConfigError::Zero { field: "gpu_mib" }
    );
    assert_eq!(
        bad(|c| c.scheduler.max_waiting = 0),
        ConfigError::Zero {
            field: "scheduler.max_waiting"
        }
    );
    assert_eq!(bad(|c| c.model = " ".into()), ConfigError::NoModel);
    assert!(matches!(
        bad(|c| c.block_tokens = 0),
        ConfigError::OutOfRange {
            field: "block_tokens",
            ..
        }
    ));
    assert!(matches!(
        bad(|c| c.tls.member = Some(String::new())),
        ConfigError::BadName {
            field: "tls.member",
            ..
        }
    ));
}

#[test]
fn load_reads_and_validates_a_file() {
    let dir = std::env::temp_dir().join(format!("strata-node-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.toml");
    std::fs::write(&path, "id = \"n2\"\nload_report_ms = 0\n").unwrap();
    assert!(matches!(
        NodeConfig::load(&path),
        Err(ConfigError::OutOfRange { value: 0, .. })
    ));
    std::fs::write(&path, "id = \"n2\"\n").unwrap();
    assert_eq!(NodeConfig::load(&path).unwrap().id, "n2");
    let missing = NodeConfig::load(&dir.join("nope.toml")).unwrap_err();
    assert!(missing.to_string().contains("nope.toml"), "{missing}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn registration_is_off_by_default_and_reads_routers_and_advertise() {
    let cfg = NodeConfig::default();
    assert!(cfg.routers.is_empty());
    assert_eq!(cfg.advertise, None);
    let cfg = parse(
        r#"
        listen = "0.0.0.0:7001"
        routers = ["10.0.0.1:7100", "[fd00::2]:7100"]
        advertise = "10.0.0.11:7001"
        "#,
    )
    .unwrap();
    assert_eq!(cfg.validate(), Ok(()));
    assert_eq!(
        cfg.routers,
        [
            "10.0.0.1:7100".parse::<SocketAddr>().unwrap(),
            "[fd00::2]:7100".parse().unwrap()
        ]
    );
    assert_eq!(cfg.advertise, Some("10.0.0.11:7001".parse().unwrap()));
    let text = toml::to_string(&cfg).unwrap();
    assert_eq!(parse(&text).unwrap(), cfg);
    assert!(matches!(
        parse("routers = [\"router-1\"]"),
        Err(ConfigError::Parse { .. })
    ));
}

#[test]
fn an_undialable_advertised_address_is_refused() {
    let with = |listen: &str, routers: usize, advertise: Option<&str>| NodeConfig {
        listen: listen.parse().unwrap(),
        routers: vec!["127.0.0.1:7100".parse().unwrap(); routers],
        advertise: advertise.map(|a| a.parse().unwrap()),
        ..NodeConfig::default()
    };
    for bad in ["0.0.0.0:7001", "[::]:7001", "10.0.0.1:0"] {
        let err = with("127.0.0.1:0", 1, Some(bad)).validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::BadAdvertise {
                value: bad.parse().unwrap(),
                hint: ""
            }
        );
        assert!(err.to_string().contains(bad), "{err}");
    }
    // Listening on every address stands in for `advertise` only on a node that registers.
    let err = with("0.0.0.0:7001", 2, None).validate().unwrap_err();
    assert!(
        matches!(err, ConfigError::BadAdvertise { value, .. } if value.port() == 7001),
        "{err}"
    );
    assert!(err.to_string().contains("listen"), "{err}");
    assert_eq!(with("0.0.0.0:7001", 0, None).validate(), Ok(()));
    assert_eq!(with("127.0.0.1:0", 2, None).validate(), Ok(()));
    assert_eq!(
        with("0.0.0.0:7001", 2, Some("10.0.0.11:7001")).validate(),
        Ok(())
    );
    assert!(matches!(
        with("127.0.0.1:0", 65, None).validate(),
        Err(ConfigError::OutOfRange {
            field: "routers",
            value: 65,
            ..
        })
    ));
}

#[test]
fn stage_sections_are_checked() {
    let stage = |layers: [usize; 2], next: Option<&str>, member: Option<&str>| NodeConfig {
        stage: Some(StageSettings {
            layers,
            next: next.map(|a| a.parse().unwrap()),
            next_member: member.map(String::from),
            micro_batches: None,
        }),
        ..NodeConfig::default()
    };
    let ok = stage([0, 2], Some("127.0.0.1:7002"), Some("node-1-s1"));
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(stage([2, 4], None, None).validate(), Ok(()));
    let msg = |c: NodeConfig| c.validate().unwrap_err().to_string();
    assert!(msg(stage([2, 2], None, None)).contains("empty"));
    assert!(msg(stage([0, 2], Some("127.0.0.1:7002"), None)).contains("next_member"));
    assert!(msg(stage([2, 4], None, Some("x"))).contains("without next"));
    assert!(msg(stage([0, 4], None, None)).contains("two or more stages"));
    let mut sim = stage([2, 4], None, None);
    sim.executor = ExecutorKind::Sim;
    assert!(msg(sim).contains("not sim"));
    let toml = "[stage]\nlayers = [2, 4]\nnext = \"127.0.0.1:9\"\nnext_member = \"n\"\n";
    let parsed = NodeConfig::from_toml_str(toml, Path::new("t.toml")).unwrap();
    assert_eq!(parsed.stage.unwrap().range(), 2..4);
}
