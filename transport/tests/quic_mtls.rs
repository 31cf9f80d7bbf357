//! Mutual TLS over QUIC: members of one cluster talk; a peer whose certificate does not come
//! from the cluster CA is refused, and the server goes on serving.

use std::time::Duration;
use strata_transport::frame::{self, DEFAULT_MAX_FRAME};
use strata_transport::proto::{Message, RequestId};
use strata_transport::tls::{ClusterCa, Identity, SERVER_NAME};
use tokio::sync::mpsc;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(20);

/// Echoes one framed message per connection; reports each handshake's outcome.
fn serve(endpoint: quinn::Endpoint) -> mpsc::Receiver<Result<(), String>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string())).await;
                        return;
                    }
                };
                let _ = tx.send(Ok(())).await;
                if let Ok((mut send, mut recv)) = conn.accept_bi().await
                    && let Ok(Some(m)) = frame::read_frame(&mut recv, DEFAULT_MAX_FRAME).await
                {
                    let _ = frame::write_frame(&mut send, &m).await;
                    let _ = send.finish();
                    let _ = conn.closed().await;
                }
            });
        }
    });
    rx
}

/// Starts an echo server for `identity` on a free loopback port.
fn start(identity: &Identity) -> (std::net::SocketAddr, mpsc::Receiver<Result<(), String>>) {
    let server = identity.endpoint("127.0.0.1:0".parse().unwrap()).unwrap();
    (server.local_addr().unwrap(), serve(server))
}

async fn exchange(client: &Identity, addr: std::net::SocketAddr) -> Result<Message, String> {
    let ep = client
        .endpoint("127.0.0.1:0".parse().unwrap())
        .map_err(|e| e.to_string())?;
    let conn = ep
        .connect(addr, SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let msg = Message::Cancel {
        request: RequestId(7),
    };
    frame::write_frame(&mut send, &msg)
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let back = frame::read_frame(&mut recv, DEFAULT_MAX_FRAME)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("stream ended without a reply")?;
    conn.close(0u32.into(), b"done");
    Ok(back)
}

#[tokio::test]
async fn members_talk_and_strangers_are_refused() {
    let ca = ClusterCa::generate("test").unwrap();
    let node = ca.issue("node-1").unwrap();
    let router = ca.issue("router-1").unwrap();
    let (addr, mut outcomes) = start(&node);

    // A member of the cluster gets its message echoed.
    let back = timeout(BOUND, exchange(&router, addr))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        back,
        Message::Cancel {
            request: RequestId(7)
        }
    );
    assert_eq!(timeout(BOUND, outcomes.recv()).await.unwrap(), Some(Ok(())));

    // A client whose certificate another CA issued (it trusts ours, so only its own
    // certificate is at fault): the server refuses the handshake.
    let foreign = ClusterCa::generate("other")
        .unwrap()
        .issue("mallory")
        .unwrap();
    let stranger = Identity {
        ca: ca.cert().clone(),
        ..foreign.clone()
    };
    let result = timeout(BOUND, exchange(&stranger, addr)).await.unwrap();
    assert!(result.is_err(), "a foreign client was served: {result:?}");
    let refused = timeout(BOUND, outcomes.recv()).await.unwrap();
    assert!(
        matches!(refused, Some(Err(_))),
        "server accepted a foreign client: {refused:?}"
    );

    // A client refuses a server whose certificate another CA issued.
    let rogue = Identity {
        ca: foreign.ca.clone(),
        ..foreign
    };
    let (rogue_addr, _rogue_outcomes) = start(&rogue);
    let result = timeout(BOUND, exchange(&router, rogue_addr)).await.unwrap();
    assert!(result.is_err(), "a client trusted a foreign server");

    // The server lives on: a member is served again.
    let back = timeout(BOUND, exchange(&router, addr))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        back,
        Message::Cancel {
            request: RequestId(7)
        }
    );
}

#[tokio::test]
async fn identities_loaded_from_files_talk() {
    let dir = std::env::temp_dir().join(format!("strata-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ClusterCa::generate("files").unwrap();
    ca.write(&dir).unwrap();
    ca.issue_to("node-1", &dir).unwrap();
    ca.issue_to("router-1", &dir).unwrap();
    let node = Identity::load(&dir, "node-1").unwrap();
    let router = Identity::load(&dir, "router-1").unwrap();
    let (addr, mut outcomes) = start(&node);
    let back = timeout(BOUND, exchange(&router, addr))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        back,
        Message::Cancel {
            request: RequestId(7)
        }
    );
    assert_eq!(timeout(BOUND, outcomes.recv()).await.unwrap(), Some(Ok(())));
    let _ = std::fs::remove_dir_all(&dir);
}
