use super::*;
use proptest::prelude::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn register(id: &str, port: u16) -> Command {
    Command::RegisterNode {
        id: id.into(),
        addr: addr(port),
        cert_fingerprint: format!("fp-{id}"),
        hardware: Hardware {
            executor: "cpu".into(),
            ..Hardware::default()
        },
    }
}

fn stage(node: &str, layers: Range<u32>) -> Stage {
    Stage {
        node: node.into(),
        layers,
    }
}

fn deploy(model: &str, layers: u32, instances: Vec<Vec<Stage>>) -> Command {
    Command::Deploy {
        model: model.into(),
        source: "tiny".into(),
        layers,
        instances: instances
            .into_iter()
            .map(|stages| Instance { stages })
            .collect(),
    }
}

fn slo(name: &str, ttft_ms: f64, tpot_ms: f64) -> SloClass {
    SloClass {
        name: name.into(),
        ttft_ms,
        tpot_ms,
        priority: 1,
    }
}

fn member(id: MemberId, name: &str) -> Member {
    Member {
        id,
        name: name.into(),
        raft_addr: addr(9000 + id as u16),
        admin_addr: addr(9100 + id as u16),
    }
}

fn json(s: &ClusterState) -> String {
    serde_json::to_string(s).expect("state serializes")
}

/// n1, n2, n3 (n3 draining); `tiny` (4 layers) on [n1] and [n1 0..2, n2 2..4]; SLO
/// `interactive`; member 1.
fn base() -> ClusterState {
    let mut s = ClusterState::default();
    let cmds = [
        register("n1", 7001),
        register("n2", 7002),
        register("n3", 7003),
        Command::Drain { id: "n3".into() },
        deploy(
            "tiny",
            4,
            vec![
                vec![stage("n1", 0..4)],
                vec![stage("n1", 0..2), stage("n2", 2..4)],
            ],
        ),
        Command::SetSlo {
            class: slo("interactive", 1000.0, 50.0),
        },
        Command::AddMember {
            member: member(1, "router-1"),
        },
    ];
    for c in cmds {
        s.apply(c).expect("base command applies");
    }
    s.validate().expect("base state is valid");
    s
}

#[test]
fn base_applies_and_counts_versions() {
    let s = base();
    assert_eq!(s.version, 7);
    assert!(s.nodes["n3"].draining);
    assert_eq!(s.deployments_on("n2").collect::<Vec<_>>(), ["tiny"]);
}

/// Applies `cmd` to the base state, expects the rejection `check` accepts, and that the state
/// did not change by one byte.
fn rejects(cmd: Command, check: impl Fn(&Rejected) -> bool) {
    let mut s = base();
    let before = json(&s);
    let err = s.apply(cmd.clone()).expect_err("command must be rejected");
    assert!(check(&err), "{cmd:?} rejected with unexpected {err:?}");
    assert_eq!(json(&s), before, "{cmd:?} changed the state");
    // The same command is rejected the same way again.
    assert_eq!(s.apply(cmd).expect_err("still rejected"), err);
}

#[test]
fn rejections_leave_state_unchanged() {
    use Rejected as R;
    rejects(register("", 7009), |e| matches!(e, R::BadName { .. }));
    rejects(register(&"x".repeat(MAX_NAME_BYTES + 1), 7009), |e| {
        matches!(
            e,
            R::BadName {
                max: MAX_NAME_BYTES,
                ..
            }
        )
    });
    rejects(
        Command::RegisterNode {
            id: "n1".into(),
            addr: addr(7001),
            cert_fingerprint: "someone-else".into(),
            hardware: Hardware::default(),
        },
        |e| matches!(e, R::DuplicateNode { node, given, .. } if node == "n1" && given == "someone-else"),
    );
    rejects(
        Command::RegisterNode {
            id: "n4".into(),
            addr: addr(7001),
            cert_fingerprint: "".into(),
            hardware: Hardware::default(),
        },
        |e| matches!(e, R::BadFingerprint { node, .. } if node == "n4"),
    );
    rejects(
        register("n4", 7001),
        |e| matches!(e, R::DuplicateNodeAddr { node, other, .. } if node == "n4" && other == "n1"),
    );
    rejects(
        Command::RemoveNode { id: "nx".into() },
        |e| matches!(e, R::UnknownNode { node } if node == "nx"),
    );
    rejects(
        Command::RemoveNode { id: "n2".into() },
        |e| matches!(e, R::NodeInUse { node, model } if node == "n2" && model == "tiny"),
    );
    rejects(Command::Drain { id: "nx".into() }, |e| {
        matches!(e, R::UnknownNode { .. })
    });
    rejects(Command::Undrain { id: "nx".into() }, |e| {
        matches!(e, R::UnknownNode { .. })
    });
    rejects(
        deploy("m", 4, vec![vec![stage("nx", 0..4)]]),
        |e| matches!(e, R::UnknownNode { node } if node == "nx"),
    );
    rejects(
        deploy("m", 4, vec![vec![stage("n3", 0..4)]]),
        |e| matches!(e, R::NodeDraining { node, .. } if node == "n3"),
    );
    rejects(deploy("m", 0, vec![vec![stage("n1", 0..4)]]), |e| {
        matches!(e, R::NoLayers { .. })
    });
    rejects(deploy("m", 4, vec![]), |e| {
        matches!(e, R::NoInstances { .. })
    });
    rejects(deploy("m", 4, vec![vec![stage("n1", 0..4)], vec![]]), |e| {
        matches!(e, R::EmptyInstance { instance: 1, .. })
    });
    rejects(
        deploy("m", 4, vec![vec![stage("n1", 0..2), stage("n2", 2..2)]]),
        |e| {
            matches!(
                e,
                R::EmptyStage {
                    stage: 1,
                    start: 2,
                    end: 2,
                    ..
                }
            )
        },
    );
    rejects(deploy("m", 4, vec![vec![stage("n1", 1..4)]]), |e| {
        matches!(
            e,
            R::LayerGap {
                stage: 0,
                expected: 0,
                start: 1,
                ..
            }
        )
    });
    rejects(
        deploy("m", 4, vec![vec![stage("n1", 0..2), stage("n2", 3..4)]]),
        |e| {
            matches!(
                e,
                R::LayerGap {
                    stage: 1,
                    expected: 2,
                    start: 3,
                    ..
                }
            )
        },
    );
    rejects(
        deploy("m", 4, vec![vec![stage("n1", 0..3), stage("n2", 2..4)]]),
        |e| {
            matches!(
                e,
                R::LayerOverlap {
                    stage: 1,
                    expected: 3,
                    start: 2,
                    ..
                }
            )
        },
    );
    rejects(deploy("m", 4, vec![vec![stage("n1", 0..3)]]), |e| {
        matches!(
            e,
            R::LayersNotCovered {
                end: 3,
                layers: 4,
                ..
            }
        )
    });
    rejects(deploy("m", 4, vec![vec![stage("n1", 0..5)]]), |e| {
        matches!(
            e,
            R::LayersNotCovered {
                end: 5,
                layers: 4,
                ..
            }
        )
    });
    rejects(
        deploy("m", 4, vec![vec![stage("n1", 0..2), stage("n1", 2..4)]]),
        |e| matches!(e, R::NodeTwiceInInstance { node, .. } if node == "n1"),
    );
    rejects(deploy("", 4, vec![vec![stage("n1", 0..4)]]), |e| {
        matches!(e, R::BadName { .. })
    });
    rejects(
        Command::Undeploy { model: "m".into() },
        |e| matches!(e, R::UnknownModel { model } if model == "m"),
    );
    rejects(
        Command::SetSlo {
            class: slo("bad", 0.0, 50.0),
        },
        |e| matches!(e, R::BadSloTarget { field, value, .. } if field == "ttft_ms" && value == "0"),
    );
    rejects(
        Command::SetSlo {
            class: slo("bad", 100.0, f64::INFINITY),
        },
        |e| matches!(e, R::BadSloTarget { field, .. } if field == "tpot_ms"),
    );
    rejects(
        Command::SetSlo {
            class: slo("bad", f64::NAN, 1.0),
        },
        |e| matches!(e, R::BadSloTarget { .. }),
    );
    rejects(
        Command::SetSlo {
            class: slo("", 1.0, 1.0),
        },
        |e| matches!(e, R::BadName { .. }),
    );
    rejects(
        Command::RemoveSlo {
            name: "batch".into(),
        },
        |e| matches!(e, R::UnknownSlo { name } if name == "batch"),
    );
    rejects(
        Command::SetPolicy {
            policy: "random".into(),
        },
        |e| matches!(e, R::UnknownPolicy { policy } if policy == "random"),
    );
    rejects(
        Command::AddMember {
            member: member(1, "router-9"),
        },
        |e| matches!(e, R::DuplicateMember { id: 1 }),
    );
    rejects(
        Command::AddMember {
            member: member(2, "router-1"),
        },
        |e| matches!(e, R::DuplicateMemberName { name } if name == "router-1"),
    );
    rejects(Command::RemoveMember { id: 7 }, |e| {
        matches!(e, R::UnknownMember { id: 7 })
    });
}

#[test]
fn accepted_commands_change_state() {
    let mut s = base();
    // Re-registration with the same certificate moves the node and keeps its drain flag.
    s.apply(register("n3", 7013)).expect("re-register");
    assert_eq!(s.nodes["n3"].addr, addr(7013));
    assert!(s.nodes["n3"].draining);
    s.apply(Command::Undrain { id: "n3".into() })
        .expect("undrain");
    s.apply(deploy(
        "tiny",
        4,
        vec![vec![stage("n3", 0..1), stage("n1", 1..4)]],
    ))
    .expect("redeploy replaces");
    assert_eq!(s.deployments["tiny"].instances.len(), 1);
    s.apply(Command::RemoveNode { id: "n2".into() })
        .expect("n2 is free now");
    for p in Policy::ALL {
        s.apply(Command::SetPolicy {
            policy: p.to_string(),
        })
        .expect("known policy");
        assert_eq!(s.policy, p);
    }
    s.apply(Command::RemoveSlo {
        name: "interactive".into(),
    })
    .expect("remove slo");
    s.apply(Command::RemoveMember { id: 1 })
        .expect("remove member");
    let v = s.apply(Command::Undeploy {
        model: "tiny".into(),
    });
    assert_eq!(v, Ok(Applied { version: 18 }));
    s.validate().expect("valid");
}

#[test]
fn state_and_commands_round_trip_through_json() {
    let s = base();
    let back: ClusterState = serde_json::from_str(&json(&s)).expect("parses");
    assert_eq!(back, s);
    let cmd = deploy("m", 2, vec![vec![stage("n1", 0..1), stage("n2", 1..2)]]);
    let text = serde_json::to_string(&cmd).expect("serializes");
    assert_eq!(serde_json::from_str::<Command>(&text).expect("parses"), cmd);
    let err = Rejected::UnknownPolicy { policy: "x".into() };
    let text = serde_json::to_string(&err).expect("serializes");
    assert_eq!(
        serde_json::from_str::<Rejected>(&text).expect("parses"),
        err
    );
}

#[test]
fn validate_catches_a_broken_state() {
    let mut s = base();
    s.nodes.remove("n2");
    assert!(matches!(
        s.validate(),
        Err(Invariant::Rule(Rejected::UnknownNode { .. }))
    ));
    let mut s = base();
    let n = s.nodes.remove("n1").expect("n1");
    s.nodes.insert("n9".into(), n);
    assert!(matches!(s.validate(), Err(Invariant::KeyMismatch { .. })));
}

// ---- property test: random command sequences ----

const NODES: [&str; 4] = ["n0", "n1", "n2", "n3"];

fn node_name() -> impl Strategy<Value = String> {
    prop::sample::select(&NODES[..]).prop_map(str::to_owned)
}

/// A layout that tiles `0..layers` with distinct nodes, or (sometimes) arbitrary stages.
fn instance(layers: u32) -> impl Strategy<Value = Instance> {
    let tiled = (
        prop::collection::btree_set(1..layers.max(2), 0..3),
        prop::sample::subsequence(NODES.to_vec(), 1..=2).prop_shuffle(),
    )
        .prop_map(move |(cuts, nodes)| {
            let mut bounds: Vec<u32> = std::iter::once(0)
                .chain(cuts.into_iter().filter(|c| *c < layers))
                .chain(std::iter::once(layers))
                .collect();
            bounds.truncate(nodes.len() + 1);
            if let Some(last) = bounds.last_mut() {
                *last = layers;
            }
            let stages = bounds
                .windows(2)
                .zip(nodes)
                .map(|(w, node)| Stage {
                    node: node.to_owned(),
                    layers: w[0]..w[1],
                })
                .collect();
            Instance { stages }
        });
    let arbitrary =
        prop::collection::vec((node_name(), 0..6u32, 0..6u32), 0..3).prop_map(|v| Instance {
            stages: v
                .into_iter()
                .map(|(node, a, b)| Stage { node, layers: a..b })
                .collect(),
        });
    prop_oneof![4 => tiled, 1 => arbitrary]
}

fn command() -> impl Strategy<Value = Command> {
    let model = prop::sample::select(vec!["m0", "m1", ""]).prop_map(str::to_owned);
    let layers = prop_oneof![9 => 1..6u32, 1 => Just(0u32)];
    let deploy = (model.clone(), layers).prop_flat_map(|(model, layers)| {
        prop::collection::vec(instance(layers), 0..4).prop_map(move |instances| Command::Deploy {
            model: model.clone(),
            source: "tiny".into(),
            layers,
            instances,
        })
    });
    let target = prop_oneof![Just(f64::NAN), Just(0.0), Just(-1.0), 1.0..1000.0f64];
    prop_oneof![
        // Mostly a node's own port and certificate; sometimes a clash or an empty fingerprint.
        3 => (node_name(), 0..8u16, prop::sample::select(vec!["own", "own", "own", "other", ""]))
            .prop_map(|(id, clash, fp)| {
                let own: u16 = id[1..].parse().expect("n<digit>");
                Command::RegisterNode {
                    addr: addr(7000 + if clash < 7 { own } else { clash % 4 }),
                    cert_fingerprint: match fp {
                        "own" => format!("fp-{id}"),
                        other => other.to_owned(),
                    },
                    id,
                    hardware: Hardware::default(),
                }
            }),
        1 => node_name().prop_map(|id| Command::RemoveNode { id }),
        1 => node_name().prop_map(|id| Command::Drain { id }),
        1 => node_name().prop_map(|id| Command::Undrain { id }),
        3 => deploy,
        1 => model.prop_map(|model| Command::Undeploy { model }),
        1 => (
            prop::sample::select(vec!["a", "b"]),
            target.clone(),
            target
        )
            .prop_map(|(name, ttft_ms, tpot_ms)| Command::SetSlo {
                class: slo(name, ttft_ms, tpot_ms),
            }),
        1 => prop::sample::select(vec!["a", "b"]).prop_map(|n| Command::RemoveSlo { name: n.into() }),
        1 => prop::sample::select(vec!["round_robin", "least_loaded", "predicted_ttft", "fastest"])
            .prop_map(|p| Command::SetPolicy { policy: p.into() }),
        1 => (1..4u64, prop::sample::select(vec!["r1", "r2", "r3"])).prop_map(|(id, name)| {
            Command::AddMember {
                member: member(id, name),
            }
        }),
        1 => (1..4u64).prop_map(|id| Command::RemoveMember { id }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn replicas_agree_and_invariants_hold(cmds in prop::collection::vec(command(), 0..60)) {
        let mut a = ClusterState::default();
        let mut b = ClusterState::default();
        let mut accepted = 0u64;
        for cmd in cmds {
            let before = json(&a);
            let ra = a.apply(cmd.clone());
            let rb = b.apply(cmd);
            prop_assert_eq!(&ra, &rb);
            match ra {
                Ok(applied) => {
                    accepted += 1;
                    prop_assert_eq!(applied.version, accepted);
                }
                Err(_) => prop_assert_eq!(json(&a), before),
            }
            prop_assert_eq!(json(&a), json(&b));
            prop_assert_eq!(a.version, accepted);
            prop_assert_eq!(a.validate(), Ok(()));
        }
    }
}

/// The generator reaches every kind of success, deployments included, so the property above
/// tests more than rejections.
#[test]
fn generator_reaches_accepted_deploys_and_removals() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config::default());
    let strategy = prop::collection::vec(command(), 0..60);
    let (mut deploys, mut removals) = (0, 0);
    for _ in 0..200 {
        let cmds = strategy.new_tree(&mut runner).expect("generate").current();
        let mut s = ClusterState::default();
        for cmd in cmds {
            let is_deploy = matches!(cmd, Command::Deploy { .. });
            let is_remove = matches!(cmd, Command::RemoveNode { .. });
            if s.apply(cmd).is_ok() {
                deploys += usize::from(is_deploy);
                removals += usize::from(is_remove);
            }
        }
    }
    assert!(deploys > 20, "only {deploys} accepted deploys");
    assert!(removals > 5, "only {removals} accepted node removals");
}
