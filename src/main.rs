//! The `vireo` command line.

mod bench_bus;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vireo",
    version,
    about = "Vireo: a machine emulator and virtualizer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure port-I/O dispatch through the PC's bus: UART registers and PCI configuration
    /// cycles through 0xCF8/0xCFC, in accesses per second.
    BenchBus(bench_bus::Options),
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match Cli::parse().command {
        Command::BenchBus(options) => bench_bus::run(&options),
    }
}
