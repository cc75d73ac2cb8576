//! `berth`: the one binary. Platform processes (`up`, `server`, `agent`) and the CLI.

mod cmd;
mod context;
mod output;
mod terminal;

use std::process::ExitCode;

use clap::Parser;

use crate::cmd::Cli;

// The router allocates a little per request on every core; glibc's allocator showed up at ~8 %
// of its CPU under load, mimalloc's per-thread heaps do not. Built without its transparent huge
// pages (`no_thp`): a server with 10,000 instances held 20-30 MiB more in part-used 2 MiB pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.command.is_platform_process() {
        // A client command piped into `head` ends quietly when the reader goes, as `cat` does,
        // instead of panicking on the failed write. Long-running platform processes keep
        // ignoring SIGPIPE: a closed socket must not kill a server.
        // SAFETY: set before any thread starts; the default action needs no handler state.
        #[allow(unsafe_code)]
        unsafe {
            let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = matches!(cli.output, output::Output::Json | output::Output::Yaml);
    match runtime.block_on(cmd::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // A script asked for JSON: the error comes as JSON too, on stdout where it reads.
            if json {
                let mut out = serde_json::json!({"error": format!("{e:#}")});
                if let Some(api) = e.downcast_ref::<berth_api::ClientError>() {
                    out["status"] = serde_json::json!(api.status());
                    if let berth_api::ClientError::Api { body, .. } = api
                        && !body.details.is_empty()
                    {
                        out["details"] = serde_json::json!(body.details);
                    }
                }
                println!("{out}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
