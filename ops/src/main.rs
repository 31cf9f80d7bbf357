//! `strata`: serve large language models on a cluster with low time-to-first-token at long
//! contexts.
//!
//! Module map:
//! - [`bench`] — benchmarks (`strata bench engine`: baseline vs layer-wise, in one run).
//! - [`certs`] — the cluster CA and member certificates (`strata certs init`).
//! - [`malloc`] — the allocator policy of the process (keep freed network buffers).

mod bench;
mod certs;
mod malloc;

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
    /// Measure Strata: load generators and side-by-side comparisons.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Certificates for mutual TLS between cluster members.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
}

fn main() -> anyhow::Result<()> {
    malloc::keep_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(cmd) => bench::run(cmd),
        Command::Certs(cmd) => certs::run(cmd),
    }
}
