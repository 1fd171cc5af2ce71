//! The `trident` command line.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // `trident … | head` ends quietly when the reader goes away, as Unix tools do, instead of
    // panicking on the failed write (Rust ignores SIGPIPE by default).
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
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
            eprintln!("error: {}", cli::with_flags(&format!("{e:#}")));
            std::process::ExitCode::from(2)
        }
    }
}
