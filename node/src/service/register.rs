//! Registration with the control plane: the node tells a router who it is, where routers reach
//! it and what hardware it has; the router writes that into the Raft `ClusterState`.
//!
//! When `routers` is set, a task started with the service tries the routers in turn. An attempt
//! connects through the node's own QUIC endpoint (as a client, with the node's certificate,
//! which is how the router knows the caller), opens one stream, sends `Register`, finishes and
//! reads one `Registered`; the whole attempt is bounded by [`ATTEMPT_TIMEOUT`].
//!
//! - accepted: the node is registered; the task ends.
//! - refused for good (`retry` false, e.g. the id belongs to another certificate): the task
//!   logs the router's message and ends.
//! - refused for now (`retry`: no leader yet), or any transport failure: back off (from
//!   [`FIRST_BACKOFF`], doubling up to [`MAX_BACKOFF`]) and try the next router, until the
//!   service shuts down. The backoff bounds the rate of attempts.
//!
//! [`RegistrationState`] on a `watch` channel says where it stands.

use quinn::{Endpoint, VarInt};
use std::net::SocketAddr;
use std::time::Duration;
use strata_transport::proto::{Message, RegisterAnswer, Registration};
use strata_transport::stream::{self, StreamError, codes};
use strata_transport::tls::SERVER_NAME;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Bound on one attempt: connecting, sending and reading the answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// The wait after the first failed attempt.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where the node's registration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationState {
    /// No routers are configured: the node does not register.
    Disabled,
    /// Not registered yet: `attempts` made so far, and why the last one failed.
    Pending {
        attempts: u32,
        last_error: Option<String>,
    },
    /// A router accepted; `version` is the ClusterState version after the write.
    Registered { version: u64 },
    /// A router refused for good; the node does not try again.
    Refused { message: String },
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The connection could not be started (bad address, endpoint closed).
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed or the connection was lost.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The stream failed or carried a bad frame.
    #[error("stream: {0}")]
    Stream(#[from] StreamError),
    /// The router answered with something other than `Registered`.
    #[error("unexpected {kind} answer")]
    Unexpected { kind: &'static str },
    /// The router finished the stream without answering.
    #[error("no answer")]
    NoAnswer,
    /// The attempt took longer than [`ATTEMPT_TIMEOUT`].
    #[error("no answer within {ms} ms")]
    Timeout { ms: u128 },
    /// The router refused for now (`retry`).
    #[error("refused for now: {message}")]
    NotYet { message: String },
}

/// What the registration task needs.
pub(crate) struct Registrar {
    pub endpoint: Endpoint,
    pub routers: Vec<SocketAddr>,
    pub registration: Registration,
    pub max_frame_bytes: usize,
}

impl Registrar {
    /// Starts the task, or reports [`RegistrationState::Disabled`] when there are no routers.
    pub fn spawn(
        self,
        shutdown: CancellationToken,
    ) -> (watch::Receiver<RegistrationState>, Option<JoinHandle<()>>) {
        if self.routers.is_empty() {
            let (_, rx) = watch::channel(RegistrationState::Disabled);
            return (rx, None);
        }
        let (tx, rx) = watch::channel(RegistrationState::Pending {
            attempts: 0,
            last_error: None,
        });
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = self.run(&tx) => {}
            }
        });
        (rx, Some(task))
    }

    /// Tries the routers in turn until one accepts or one refuses for good.
    async fn run(&self, state: &watch::Sender<RegistrationState>) {
        let node = &self.registration.node;
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0u32;
        for router in self.routers.iter().cycle() {
            attempts = attempts.saturating_add(1);
            let result = tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt(*router)).await;
            let error = match result {
                Ok(Ok(answer)) if answer.accepted => {
                    tracing::info!(%node, %router, version = answer.version, "registered");
                    state.send_replace(RegistrationState::Registered {
                        version: answer.version,
                    });
                    return;
                }
                Ok(Ok(RegisterAnswer {
                    retry: false,
                    message,
                    ..
                })) => {
                    tracing::error!(%node, %router, "registration refused: {message}");
                    state.send_replace(RegistrationState::Refused { message });
                    return;
                }
                Ok(Ok(RegisterAnswer { message, .. })) => {
                    tracing::info!(%node, %router, "registration not possible yet: {message}");
                    AttemptError::NotYet { message }
                }
                Ok(Err(e)) => {
                    tracing::warn!(%node, %router, "registration attempt failed: {e}");
                    e
                }
                Err(_) => {
                    let e = AttemptError::Timeout {
                        ms: ATTEMPT_TIMEOUT.as_millis(),
                    };
                    tracing::warn!(%node, %router, "registration attempt failed: {e}");
                    e
                }
            };
            state.send_replace(RegistrationState::Pending {
                attempts,
                last_error: Some(format!("{router}: {error}")),
            });
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt against `router`: connect, send `Register`, read `Registered`.
    async fn attempt(&self, router: SocketAddr) -> Result<RegisterAnswer, AttemptError> {
        let conn = self.endpoint.connect(router, SERVER_NAME)?.await?;
        let answer = async {
            let (mut send, mut recv) = stream::pair(conn.open_bi().await?, self.max_frame_bytes);
            send.send(&Message::Register(self.registration.clone()))
                .await?;
            send.finish()?;
            match recv.recv().await? {
                Some(Message::Registered(answer)) => Ok(answer),
                Some(other) => {
                    recv.stop(codes::UNEXPECTED_MESSAGE);
                    Err(AttemptError::Unexpected { kind: other.kind() })
                }
                None => Err(AttemptError::NoAnswer),
            }
        }
        .await;
        conn.close(VarInt::from_u32(codes::DONE), b"registration done");
        answer
    }
}
