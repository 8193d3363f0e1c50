//! `revo`: parse the command line and hand off to `revo::commands`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = revo::cli::Cli::parse();
    match revo::commands::run(cli).await {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
