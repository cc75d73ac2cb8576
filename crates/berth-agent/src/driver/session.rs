//! Streamed exec sessions (`berth app NAME exec -i`/`-t`): a command started through its
//! instance's driver, its input, output, terminal size and exit carried as
//! `berth_api::exec_stream` frames over the connection the agent attached to the server.
//!
//! Each driver gives the same three parts (`driver/*/commands.rs`): the output as frames on a
//! channel, an input side (stdin bytes, end of input, resize) and an end (wait, kill). One pump
//! drives them.

use std::future::Future;
use std::pin::Pin;

use berth_api::ExecResult;
use berth_api::exec_stream::{Frame, FrameReader, TermSize, write_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Output chunks waiting for the client; a slow client slows the command instead of filling
/// the agent's memory.
pub(crate) const OUTPUT_QUEUE: usize = 64;

pub(crate) type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the client's input goes.
pub(crate) trait Input: Send {
    /// Bytes for the command's stdin; a command that closed it takes no more.
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> Fut<'a, ()>;
    /// The client has no more input.
    fn close(&mut self) -> Fut<'_, ()>;
    fn resize(&mut self, size: TermSize) -> Fut<'_, ()>;
}

/// How the command ends.
pub(crate) trait Ending: Send {
    fn wait(&mut self) -> Fut<'_, ExecResult>;
    /// Ends the command its client left, as a hang-up would.
    fn kill(&mut self) -> Fut<'_, ()>;
}

pub(crate) struct Session {
    pub output: mpsc::Receiver<Frame>,
    pub input: Box<dyn Input>,
    pub end: Box<dyn Ending>,
}

/// Input for a command that reads none.
pub(crate) struct NoInput;

impl Input for NoInput {
    fn write<'a>(&'a mut self, _: &'a [u8]) -> Fut<'a, ()> {
        Box::pin(async {})
    }
    fn close(&mut self) -> Fut<'_, ()> {
        Box::pin(async {})
    }
    fn resize(&mut self, _: TermSize) -> Fut<'_, ()> {
        Box::pin(async {})
    }
}

/// Runs the session to its end: output to the client, the client's input to the command, and
/// the exit as the last frame. The command is killed if the client goes first.
pub(crate) async fn pump<IO>(io: IO, session: Result<Session, String>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let Session { mut output, mut input, mut end } = match session {
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
        end.kill().await;
        None
    } else {
        tokio::select! {
            r = end.wait() => Some(r),
            _ = &mut gone => { end.kill().await; None }
        }
    };
    reader.abort();
    if let Some(result) = result {
        let _ = write_frame(&mut wr, &Frame::Exit(result)).await;
        let _ = wr.shutdown().await;
    }
}

/// Sends what `read` yields as frames made by `frame` until it ends.
pub(crate) fn forward<R>(mut read: R, frame: fn(Vec<u8>) -> Frame, out: mpsc::Sender<Frame>)
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

/// Most of each output stream a collected (not streamed) exec returns.
const EXEC_OUTPUT_CAP: usize = 1 << 20;

pub(crate) fn capped(mut bytes: Vec<u8>) -> String {
    bytes.truncate(EXEC_OUTPUT_CAP);
    String::from_utf8_lossy(&bytes).into_owned()
}
