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
    // Library warnings (a text split into windows, a long text truncated, …) go to stderr in
    // the CLI's one style, repeated ones summarised at the end (cli::report).
    {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(cli::report::WarningLayer);
        // Only fails when a subscriber is already set, which nothing else does.
        let _ = tracing::subscriber::set_global_default(subscriber);
    }
    let code = match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cli::with_flags(&format!("{e:#}")));
            std::process::ExitCode::from(2)
        }
    };
    cli::report::finish();
    code
}
