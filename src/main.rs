//! The `vireo` command line.

mod bench_bus;
mod run;

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
    /// Boot a standalone PC (QEMU-style options: `vireo run -m 256 -nographic -drive file=…`).
    Run(Box<run::Options>),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse_from(run::options::qemu_style_args(std::env::args()));
    let result = match cli.command {
        Command::BenchBus(options) => bench_bus::run(&options).map(|()| 0),
        Command::Run(options) => run::run(&options),
    };
    match result {
        Ok(status) => std::process::exit(status),
        Err(e) => {
            // One line, causes joined, as a user of QEMU expects; no backtrace.
            eprintln!("vireo: error: {e:#}");
            std::process::exit(1);
        }
    }
}
