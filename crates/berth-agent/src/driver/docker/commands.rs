//! Commands inside a container: `docker exec`, collected (one answer) or attached (a session
//! with stdin and a TTY when asked).

use std::pin::Pin;
use std::time::Duration;

use berth_api::exec_stream::{Frame, TermSize};
use berth_api::{ExecRequest, ExecResult};
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use futures_util::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::driver::session::{Ending, Fut, Input, OUTPUT_QUEUE, Session, capped};

/// Runs `command` in the container and answers with its output (capped) and exit code.
pub(crate) async fn collected(docker: &Docker, container: &str, command: &[String]) -> Result<ExecResult, String> {
    let config = ExecConfig {
        cmd: Some(command.to_vec()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let created = docker.create_exec(container, config).await.map_err(|e| format!("docker exec: {e}"))?;
    let started = docker.start_exec(&created.id, None).await.map_err(|e| format!("docker exec: {e}"))?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    if let StartExecResults::Attached { mut output, .. } = started {
        while let Some(Ok(item)) = output.next().await {
            match item {
                LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
                other => stdout.extend_from_slice(&other.into_bytes()),
            }
        }
    }
    let inspected = docker.inspect_exec(&created.id).await.map_err(|e| format!("docker exec: {e}"))?;
    Ok(ExecResult {
        exit_code: inspected.exit_code,
        stdout: capped(stdout),
        stderr: capped(stderr),
        ..Default::default()
    })
}

/// Starts `docker exec` in a container, attached: stdin when asked, a TTY when asked.
pub(crate) async fn attached(docker: &Docker, container: &str, req: &ExecRequest) -> Result<Session, String> {
    let config = ExecConfig {
        cmd: Some(req.command.clone()),
        attach_stdin: Some(req.stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(req.tty),
        ..Default::default()
    };
    let created = docker.create_exec(container, config).await.map_err(|e| format!("docker exec: {e}"))?;
    let opts = StartExecOptions { detach: false, tty: req.tty, output_capacity: None };
    let started = docker.start_exec(&created.id, Some(opts)).await.map_err(|e| format!("docker exec: {e}"))?;
    let StartExecResults::Attached { mut output, input } = started else {
        return Err("docker exec: the engine did not attach".into());
    };
    let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
    tokio::spawn(async move {
        while let Some(Ok(item)) = output.next().await {
            let frame = match item {
                LogOutput::StdErr { message } => Frame::Stderr(message.to_vec()),
                other => Frame::Stdout(other.into_bytes().to_vec()),
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    let mut stdin =
        ExecInput { docker: docker.clone(), exec: created.id.clone(), stdin: req.stdin.then_some(input), tty: req.tty };
    if let Some(size) = req.size.filter(|_| req.tty) {
        stdin.resize(size).await;
    }
    let end = ExecEnd { docker: docker.clone(), exec: created.id };
    Ok(Session { output: rx, input: Box::new(stdin), end: Box::new(end) })
}

struct ExecInput {
    docker: Docker,
    exec: String,
    stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>,
    tty: bool,
}

impl Input for ExecInput {
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> Fut<'a, ()> {
        Box::pin(async move {
            if let Some(w) = self.stdin.as_mut()
                && w.write_all(bytes).await.is_err()
            {
                self.stdin = None;
            }
        })
    }

    fn close(&mut self) -> Fut<'_, ()> {
        Box::pin(async move {
            match (self.tty, self.stdin.as_mut()) {
                // A terminal has no end of input of its own; its line discipline makes one of ^D.
                (true, Some(w)) => {
                    let _ = w.write_all(&[0x04]).await;
                }
                (false, Some(_)) => {
                    if let Some(mut w) = self.stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                (_, None) => {}
            }
        })
    }

    fn resize(&mut self, size: TermSize) -> Fut<'_, ()> {
        Box::pin(async move {
            let opts = ResizeExecOptions { height: size.rows, width: size.cols };
            let _ = self.docker.resize_exec(&self.exec, opts).await;
        })
    }
}

struct ExecEnd {
    docker: Docker,
    exec: String,
}

impl Ending for ExecEnd {
    fn wait(&mut self) -> Fut<'_, ExecResult> {
        Box::pin(async move {
            // The output ends as the command does; the engine may take a moment to record it.
            for _ in 0..100 {
                match self.docker.inspect_exec(&self.exec).await {
                    Ok(i) if i.running != Some(true) => {
                        return ExecResult { exit_code: i.exit_code, ..Default::default() };
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(e) => return ExecResult { error: Some(format!("docker exec: {e}")), ..Default::default() },
                }
            }
            ExecResult { error: Some("docker exec: still running after its output ended".into()), ..Default::default() }
        })
    }

    /// The engine has no call to end an exec: its own process is killed.
    fn kill(&mut self) -> Fut<'_, ()> {
        Box::pin(async move {
            use nix::sys::signal::{Signal, kill};
            use nix::unistd::Pid;
            if let Ok(i) = self.docker.inspect_exec(&self.exec).await
                && i.running == Some(true)
                && let Some(pid) = i.pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0)
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        })
    }
}
