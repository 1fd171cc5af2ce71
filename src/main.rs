//! The `trident` command line.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    trident::core::device::tune_allocator();
    let args = cli::Cli::parse();
    // Library warnings (a text split into windows, a long text truncated, …) go to stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .without_time()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
