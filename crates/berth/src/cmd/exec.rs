//! `berth app NAME exec`: a command inside an instance, its output live as it comes, with the
//! local input (`-i`) and the local terminal (`-t`) joined to it, as `docker exec -it` and
//! `kubectl exec -it` do.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use berth_api::ExecRequest;
use berth_api::exec_stream::{Frame, FrameReader, write_frame};
use tokio::sync::mpsc;

use crate::terminal;

/// Runs `command` in `instance` over an exec stream and exits with its code.
pub async fn stream(
    client: &berth_api::Client,
    instance: &str,
    command: Vec<String>,
    stdin: bool,
    mut tty: bool,
) -> anyhow::Result<ExitCode> {
    if tty && !std::io::stdin().is_terminal() {
        // kubectl's choice over docker's refusal: the command still runs, as a script wants.
        eprintln!("note: stdin is not a terminal; running without a TTY");
        tty = false;
    }
    let req =
        ExecRequest { command, stdin, tty, size: if tty { terminal::size() } else { None }, ..Default::default() };
    let io = client.exec_stream(instance, &req).await?;
    let (rd, mut wr) = tokio::io::split(io);
    let mut frames = FrameReader::new(rd);
    // Set after the server has said yes, so a refusal prints on a sane terminal; and only when
    // the keys go to the command, or nothing would take Ctrl-C.
    let raw = if tty && stdin { terminal::RawMode::enable() } else { None };
    let (input_tx, mut input) = mpsc::channel::<Frame>(16);
    if stdin {
        read_stdin(input_tx.clone());
    } else {
        let _ = input_tx.send(Frame::StdinEnd).await;
    }
    let mut resized = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    let ended = loop {
        tokio::select! {
            frame = frames.next() => match frame? {
                Some(Frame::Stdout(bytes)) => { out.write_all(&bytes)?; out.flush()?; }
                Some(Frame::Stderr(bytes)) => { err.write_all(&bytes)?; err.flush()?; }
                Some(Frame::Exit(result)) => break Some(result),
                Some(_) => {}
                None => break None,
            },
            Some(frame) = input.recv() => write_frame(&mut wr, &frame).await?,
            _ = resized.recv(), if tty => {
                if let Some(size) = terminal::size() {
                    write_frame(&mut wr, &Frame::Resize(size)).await?;
                }
            }
        }
    };
    drop(raw);
    let Some(result) = ended else {
        anyhow::bail!("{instance}: the session ended without the command's exit (the server or its agent went away)");
    };
    if let Some(why) = result.error {
        anyhow::bail!("{instance}: {why}");
    }
    Ok(exit_status(&result))
}

/// The command's own exit code, as `docker exec` and `kubectl exec` give it; 1 when it has none.
pub fn exit_status(result: &berth_api::ExecResult) -> ExitCode {
    ExitCode::from(result.exit_code.map_or(1, |c| u8::try_from(c).unwrap_or(1)))
}

/// Reads stdin on a thread of its own (a blocking read must not hold the runtime at exit) and
/// sends it as frames, then the end of input.
fn read_stdin(tx: mpsc::Sender<Frame>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(Frame::StdinEnd);
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Frame::Stdin(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
}
