//! Streamed exec sessions (`berth app NAME exec -i`/`-t`): a command started through its
//! instance's driver, its input, output, terminal size and exit carried as
//! `berth_api::exec_stream` frames over the connection the agent attached to the server.
//!
//! Each driver gives the same three parts: the output as frames on a channel, an input side
//! (stdin bytes, end of input, resize) and an exit side (wait, kill). One pump drives them.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::Duration;

use berth_api::exec_stream::{Frame, FrameReader, TermSize, write_frame};
use berth_api::{ExecRequest, ExecResult};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Output chunks waiting for the client; a slow client slows the command instead of filling
/// the agent's memory.
const OUTPUT_QUEUE: usize = 64;

pub(crate) struct Session {
    output: mpsc::Receiver<Frame>,
    input: Input,
    exit: Exit,
}

enum Input {
    Closed,
    Pipe(tokio::process::ChildStdin),
    Pty(pty_process::OwnedWritePty),
    Docker { docker: bollard::Docker, exec: String, stdin: Option<Pin<Box<dyn AsyncWrite + Send>>>, tty: bool },
}

enum Exit {
    Process(tokio::process::Child),
    Docker { docker: bollard::Docker, exec: String },
}

/// Runs the session to its end: output to the client, the client's input to the command, and
/// the exit as the last frame. The command is killed if the client goes first.
pub(crate) async fn pump<IO>(io: IO, session: Result<Session, String>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let Session { mut output, mut input, mut exit } = match session {
        Ok(s) => s,
        Err(why) => {
            let _ = write_frame(&mut wr, &Frame::Exit(ExecResult { error: Some(why), ..Default::default() })).await;
            let _ = wr.shutdown().await;
            return;
        }
    };
    // The client's frames are read apart from the output, so a command that does not read its
    // input never stops its output from flowing.
    let (gone_tx, mut gone) = oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        let mut frames = FrameReader::new(rd);
        loop {
            match frames.next().await {
                Ok(Some(Frame::Stdin(bytes))) => input.write(&bytes).await,
                Ok(Some(Frame::StdinEnd)) => input.close().await,
                Ok(Some(Frame::Resize(size))) => input.resize(size).await,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    let _ = gone_tx.send(());
                    return;
                }
            }
        }
    });
    let client_left = loop {
        tokio::select! {
            out = output.recv() => match out {
                Some(frame) => {
                    if write_frame(&mut wr, &frame).await.is_err() {
                        break true;
                    }
                }
                None => break false,
            },
            _ = &mut gone => break true,
        }
    };
    let result = if client_left {
        exit.kill().await;
        None
    } else {
        tokio::select! {
            r = exit.wait() => Some(r),
            _ = &mut gone => { exit.kill().await; None }
        }
    };
    reader.abort();
    if let Some(result) = result {
        let _ = write_frame(&mut wr, &Frame::Exit(result)).await;
        let _ = wr.shutdown().await;
    }
}

impl Input {
    async fn write(&mut self, bytes: &[u8]) {
        let written = match self {
            Input::Closed => return,
            Input::Pipe(w) => w.write_all(bytes).await,
            Input::Pty(w) => w.write_all(bytes).await,
            Input::Docker { stdin: Some(w), .. } => w.write_all(bytes).await,
            Input::Docker { stdin: None, .. } => return,
        };
        // The command closed its input: what the client types next has nowhere to go.
        if written.is_err() {
            self.close().await;
        }
    }

    async fn close(&mut self) {
        match self {
            // A terminal has no end of input of its own; the line discipline makes one of ^D.
            Input::Pty(w) => {
                let _ = w.write_all(&[0x04]).await;
            }
            Input::Docker { stdin: Some(w), tty: true, .. } => {
                let _ = w.write_all(&[0x04]).await;
            }
            Input::Docker { stdin, .. } => {
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
            }
            Input::Pipe(_) | Input::Closed => *self = Input::Closed,
        }
    }

    async fn resize(&mut self, size: TermSize) {
        match self {
            Input::Pty(w) => {
                let _ = w.resize(pty_process::Size::new(size.rows, size.cols));
            }
            Input::Docker { docker, exec, .. } => {
                let opts = bollard::exec::ResizeExecOptions { height: size.rows, width: size.cols };
                let _ = docker.resize_exec(exec, opts).await;
            }
            Input::Pipe(_) | Input::Closed => {}
        }
    }
}

impl Exit {
    async fn wait(&mut self) -> ExecResult {
        match self {
            Exit::Process(child) => match child.wait().await {
                Ok(status) => ExecResult { exit_code: Some(exit_code(status)), ..Default::default() },
                Err(e) => ExecResult { error: Some(format!("waiting for the command: {e}")), ..Default::default() },
            },
            Exit::Docker { docker, exec } => {
                // The output ends as the command does; the engine may take a moment to record it.
                for _ in 0..100 {
                    match docker.inspect_exec(exec).await {
                        Ok(i) if i.running != Some(true) => {
                            return ExecResult { exit_code: i.exit_code, ..Default::default() };
                        }
                        Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        Err(e) => return ExecResult { error: Some(format!("docker exec: {e}")), ..Default::default() },
                    }
                }
                ExecResult {
                    error: Some("docker exec: still running after its output ended".into()),
                    ..Default::default()
                }
            }
        }
    }

    /// Ends the command its client left, as a hang-up would: its whole process group for a
    /// process; for a container the engine has no call, so the exec's own process.
    async fn kill(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        match self {
            Exit::Process(child) => {
                if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = child.kill().await;
            }
            Exit::Docker { docker, exec } => {
                if let Ok(i) = docker.inspect_exec(exec).await
                    && i.running == Some(true)
                    && let Some(pid) = i.pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0)
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }
}

/// A process's exit as a shell reports it: its code, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    status.code().map(i64::from).or_else(|| status.signal().map(|s| 128 + i64::from(s))).unwrap_or(1)
}

/// Sends what `read` yields as frames made by `frame` until it ends.
fn forward<R>(mut read: R, frame: fn(Vec<u8>) -> Frame, out: mpsc::Sender<Frame>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        // A pty's reader fails with EIO once the command and its children have closed it: the end.
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 || out.send(frame(buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    });
}

/// Starts a command beside an exec-driver process: in its directory, with its environment, in
/// a process group of its own (a session on its own terminal with `tty`).
pub(crate) fn start_beside(
    dir: &std::path::Path,
    req: &ExecRequest,
    env: &BTreeMap<String, String>,
) -> Result<Session, String> {
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
        return Ok(Session { output, input: Input::Pty(write), exit: Exit::Process(child) });
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
    let input = child.stdin.take().map_or(Input::Closed, Input::Pipe);
    Ok(Session { output, input, exit: Exit::Process(child) })
}

/// Starts `docker exec` in a container, attached: stdin when asked, a TTY when asked.
pub(crate) async fn start_in_container(
    docker: &bollard::Docker,
    container: &str,
    req: &ExecRequest,
) -> Result<Session, String> {
    let config = bollard::models::ExecConfig {
        cmd: Some(req.command.clone()),
        attach_stdin: Some(req.stdin),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(req.tty),
        ..Default::default()
    };
    let created = docker.create_exec(container, config).await.map_err(|e| format!("docker exec: {e}"))?;
    let opts = bollard::exec::StartExecOptions { detach: false, tty: req.tty, output_capacity: None };
    let started = docker.start_exec(&created.id, Some(opts)).await.map_err(|e| format!("docker exec: {e}"))?;
    let bollard::exec::StartExecResults::Attached { mut output, input } = started else {
        return Err("docker exec: the engine did not attach".into());
    };
    let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
    tokio::spawn(async move {
        while let Some(Ok(item)) = output.next().await {
            let frame = match item {
                bollard::container::LogOutput::StdErr { message } => Frame::Stderr(message.to_vec()),
                other => Frame::Stdout(other.into_bytes().to_vec()),
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    let mut input = Input::Docker {
        docker: docker.clone(),
        exec: created.id.clone(),
        stdin: req.stdin.then_some(input),
        tty: req.tty,
    };
    if let Some(size) = req.size.filter(|_| req.tty) {
        input.resize(size).await;
    }
    Ok(Session { output: rx, input, exit: Exit::Docker { docker: docker.clone(), exec: created.id } })
}
