//! `sitrep bench ...`: measurements recorded in BENCHMARKS.md.

use clap::Subcommand;

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Durable sends, one client, one message at a time.
    Send {
        /// Messages to send.
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
}

/// Run a benchmark.
pub async fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Send { count } => {
            let _ = count;
            anyhow::bail!("not implemented yet")
        }
    }
}
