//! `berth`: the one binary. Platform processes (`up`, `server`, `agent`) and the CLI.

mod cmd;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::cmd::Cli;

// The router allocates a little per request on every core; glibc's allocator showed up at ~8 %
// of its CPU under load, mimalloc's per-thread heaps do not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
