//! Commands beside an exec-driver process: in its directory, with its environment, collected
//! (one answer) or attached (a session, on a pty of its own with a TTY).

use std::collections::BTreeMap;
use std::path::Path;

use berth_api::exec_stream::{Frame, TermSize};
use berth_api::{ExecRequest, ExecResult};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::driver::session::{Ending, Fut, Input, NoInput, OUTPUT_QUEUE, Session, capped, forward};

/// Runs `command` and answers with its output (capped) and exit code.
pub(crate) async fn collected(
    dir: &Path,
    command: &[String],
    env: &BTreeMap<String, String>,
) -> Result<ExecResult, String> {
    let (program, args) = command.split_first().ok_or("an empty command")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).envs(env).stdin(std::process::Stdio::null()).kill_on_drop(true);
    if dir.is_dir() {
        cmd.current_dir(dir);
    }
    let out = cmd.output().await.map_err(|e| format!("{program}: {e}"))?;
    Ok(ExecResult {
        exit_code: out.status.code().map(i64::from),
        stdout: capped(out.stdout),
        stderr: capped(out.stderr),
        ..Default::default()
    })
}

/// Starts a command in a process group of its own (a session on its own terminal with `tty`).
pub(crate) fn attached(dir: &Path, req: &ExecRequest, env: &BTreeMap<String, String>) -> Result<Session, String> {
    let (program, args) = req.command.split_first().ok_or("an empty command")?;
    let (tx, output) = mpsc::channel(OUTPUT_QUEUE);
    if req.tty {
        let (pty, pts) = pty_process::open().map_err(|e| format!("opening a terminal: {e}"))?;
        if let Some(size) = req.size {
            let _ = pty.resize(pty_process::Size::new(size.rows, size.cols));
        }
        let mut cmd = pty_process::Command::new(program).args(args).envs(env).kill_on_drop(true);
        if dir.is_dir() {
            cmd = cmd.current_dir(dir);
        }
        let child = cmd.spawn(pts).map_err(|e| format!("{program}: {e}"))?;
        let (read, write) = pty.into_split();
        forward(read, Frame::Stdout, tx);
        return Ok(Session { output, input: Box::new(PtyInput(write)), end: Box::new(ProcessEnd(child)) });
    }
    let mut cmd = tokio::process::Command::new(program);
    let stdin = if req.stdin { std::process::Stdio::piped() } else { std::process::Stdio::null() };
    cmd.args(args)
        .envs(env)
        .stdin(stdin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if dir.is_dir() {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(|e| format!("{program}: {e}"))?;
    if let Some(out) = child.stdout.take() {
        forward(out, Frame::Stdout, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, Frame::Stderr, tx);
    }
    let input: Box<dyn Input> = match child.stdin.take() {
        Some(pipe) => Box::new(PipeInput(Some(pipe))),
        None => Box::new(NoInput),
    };
    Ok(Session { output, input, end: Box::new(ProcessEnd(child)) })
}

struct PipeInput(Option<tokio::process::ChildStdin>);

impl Input for PipeInput {
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> Fut<'a, ()> {
        Box::pin(async move {
            // The command closed its input: what the client types next has nowhere to go.
            if let Some(w) = self.0.as_mut()
                && w.write_all(bytes).await.is_err()
            {
                self.0 = None;
            }
        })
    }
    fn close(&mut self) -> Fut<'_, ()> {
        self.0 = None;
        Box::pin(async {})
    }
    fn resize(&mut self, _: TermSize) -> Fut<'_, ()> {
        Box::pin(async {})
    }
}

struct PtyInput(pty_process::OwnedWritePty);

impl Input for PtyInput {
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> Fut<'a, ()> {
        Box::pin(async move {
            let _ = self.0.write_all(bytes).await;
        })
    }
    /// A terminal has no end of input of its own; its line discipline makes one of ^D.
    fn close(&mut self) -> Fut<'_, ()> {
        Box::pin(async move {
            let _ = self.0.write_all(&[0x04]).await;
        })
    }
    fn resize(&mut self, size: TermSize) -> Fut<'_, ()> {
        let _ = self.0.resize(pty_process::Size::new(size.rows, size.cols));
        Box::pin(async {})
    }
}

struct ProcessEnd(tokio::process::Child);

impl Ending for ProcessEnd {
    fn wait(&mut self) -> Fut<'_, ExecResult> {
        Box::pin(async move {
            match self.0.wait().await {
                Ok(status) => ExecResult { exit_code: Some(exit_code(status)), ..Default::default() },
                Err(e) => ExecResult { error: Some(format!("waiting for the command: {e}")), ..Default::default() },
            }
        })
    }

    /// Its whole process group, as a hang-up would end it.
    fn kill(&mut self) -> Fut<'_, ()> {
        Box::pin(async move {
            use nix::sys::signal::{Signal, killpg};
            use nix::unistd::Pid;
            if let Some(pid) = self.0.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = self.0.kill().await;
        })
    }
}

/// A process's exit as a shell reports it: its code, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    status.code().map(i64::from).or_else(|| status.signal().map(|s| 128 + i64::from(s))).unwrap_or(1)
}
