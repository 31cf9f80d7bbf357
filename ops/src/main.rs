//! `strata`: serve large language models on a cluster with low time-to-first-token at long
//! contexts.
//!
//! Module map:
//! - [`admin`] — the operator's CLI for the control plane (`strata admin`).
//! - [`bench`] — benchmarks (`strata bench engine`: baseline vs layer-wise, in one run).
//! - [`certs`] — the cluster CA and member certificates (`strata certs init`).
//! - [`up`] — a whole local cluster in one command (`strata up`).
//! - [`router_cmd`] — the router service (`strata router --config`).
//! - [`node`] — a node service (`strata node --config`).
//! - [`logging`] — log setup of the long-running services.
//! - [`malloc`] — the allocator policy of the process (keep freed network buffers).

mod admin;
mod bench;
mod certs;
mod logging;
mod malloc;
mod node;
mod router_cmd;
mod up;

use clap::{Parser, Subcommand};

/// Strata serves LLMs with low time-to-first-token at long contexts by managing the KV cache
/// layer by layer (after LayerKV, arXiv 2410.00428).
#[derive(Debug, Parser)]
#[command(name = "strata", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a whole local cluster: router replicas and N instances (a node or a pipeline of
    /// stage nodes each), every member its own process.
    Up(up::UpArgs),
    /// Run a router: the OpenAI-compatible HTTP endpoint with TTFT-predictive placement.
    Router(router_cmd::RouterArgs),
    /// Run a node: a model on an executor, served to routers over QUIC with mutual TLS.
    Node(node::NodeArgs),
    /// Inspect and change a running cluster through its Raft control plane.
    Admin(admin::AdminArgs),
    /// Measure Strata: load generators and side-by-side comparisons.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Certificates for mutual TLS between cluster members.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
}

fn main() -> std::process::ExitCode {
    malloc::keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(args),
        Command::Router(args) => router_cmd::run(args),
        Command::Node(args) => node::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Certs(cmd) => certs::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The whole chain of causes on one line, without a backtrace: these are the user's
        // errors to read, not the program's.
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
