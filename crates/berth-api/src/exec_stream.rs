//! An interactive exec (`berth app NAME exec -it`) as frames on one upgraded HTTP connection.
//!
//! The client and the instance's agent each upgrade a connection to the server, which joins
//! the two byte for byte: both legs speak the same frames. Each frame is a kind byte, a 32-bit
//! big-endian length and that many bytes of payload; stdout and stderr stay apart, and the
//! terminal size and the exit travel in band, as Docker's attach and Kubernetes' exec channels
//! carry them.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::ExecResult;

/// The `Upgrade` header's protocol for an exec stream.
pub const PROTOCOL: &str = "berth-exec.v1";

/// Largest payload a frame may carry; larger announces a broken or hostile peer.
pub const MAX_FRAME: usize = 1 << 20;

const HEADER: usize = 5;

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    pub cols: u16,
    pub rows: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Bytes for the command's standard input (client to command).
    Stdin(Vec<u8>),
    /// The client has no more input: the command's stdin is closed.
    StdinEnd,
    /// The client's terminal changed size.
    Resize(TermSize),
    /// Output of the command (command to client); with a TTY everything comes as stdout.
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command ended (its code) or could not run (`error`): the last frame of a session.
    Exit(ExecResult),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("exec stream: unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("exec stream: a frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("exec stream: a malformed {0} frame")]
    Malformed(&'static str),
}

impl From<FrameError> for std::io::Error {
    fn from(e: FrameError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Stdin(_) => 0,
            Frame::Stdout(_) => 1,
            Frame::Stderr(_) => 2,
            Frame::Exit(_) => 3,
            Frame::Resize(_) => 4,
            Frame::StdinEnd => 5,
        }
    }

    /// Appends the frame's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(self.kind());
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Stdin(b) | Frame::Stdout(b) | Frame::Stderr(b) => out.extend_from_slice(b),
            Frame::StdinEnd => {}
            Frame::Resize(s) => {
                out.extend_from_slice(&s.cols.to_be_bytes());
                out.extend_from_slice(&s.rows.to_be_bytes());
            }
            // A struct of strings and numbers always serialises.
            Frame::Exit(r) => out.extend_from_slice(&serde_json::to_vec(r).unwrap_or_default()),
        }
        let len = (out.len() - start - HEADER) as u32;
        out[start + 1..start + HEADER].copy_from_slice(&len.to_be_bytes());
    }

    /// Takes the first whole frame off the front of `buf`; None until one has fully arrived.
    pub fn decode(buf: &mut Vec<u8>) -> Result<Option<Frame>, FrameError> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if buf.len() < HEADER + len {
            return Ok(None);
        }
        let kind = buf[0];
        let payload: Vec<u8> = buf.drain(..HEADER + len).skip(HEADER).collect();
        let frame = match kind {
            0 => Frame::Stdin(payload),
            1 => Frame::Stdout(payload),
            2 => Frame::Stderr(payload),
            3 => Frame::Exit(serde_json::from_slice(&payload).map_err(|_| FrameError::Malformed("exit"))?),
            4 => match payload[..] {
                [c0, c1, r0, r1] => {
                    Frame::Resize(TermSize { cols: u16::from_be_bytes([c0, c1]), rows: u16::from_be_bytes([r0, r1]) })
                }
                _ => return Err(FrameError::Malformed("resize")),
            },
            5 => Frame::StdinEnd,
            other => return Err(FrameError::UnknownKind(other)),
        };
        Ok(Some(frame))
    }
}

/// Reads frames from one side of a stream. `next` may be cancelled (in a `select!`) without
/// losing bytes: a partly read frame waits in the buffer.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader { inner, buf: Vec::with_capacity(8192) }
    }

    /// The next frame, or None once the peer has closed its side cleanly.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = Frame::decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "exec stream: cut inside a frame"))
                };
            }
        }
    }
}

/// Writes one frame whole.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    frame.encode(&mut bytes);
    w.write_all(&bytes).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Frame> {
        vec![
            Frame::Stdin(b"ls -l\n".to_vec()),
            Frame::StdinEnd,
            Frame::Resize(TermSize { cols: 132, rows: 43 }),
            Frame::Stdout(vec![0, 255, 27, b'[']),
            Frame::Stderr(Vec::new()),
            Frame::Exit(ExecResult { exit_code: Some(3), ..Default::default() }),
            Frame::Exit(ExecResult { error: Some("no such instance".into()), ..Default::default() }),
        ]
    }

    #[test]
    fn frames_survive_the_wire_whole_and_byte_by_byte() {
        let mut wire = Vec::new();
        for f in every_kind() {
            f.encode(&mut wire);
        }
        let mut buf = wire.clone();
        let mut got = Vec::new();
        while let Some(f) = Frame::decode(&mut buf).unwrap() {
            got.push(f);
        }
        assert_eq!(got, every_kind());
        assert!(buf.is_empty());
        // Arriving one byte at a time, a frame appears only once it is whole.
        let (mut buf, mut got) = (Vec::new(), Vec::new());
        for b in wire {
            buf.push(b);
            if let Some(f) = Frame::decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, every_kind());
    }

    #[test]
    fn bad_frames_are_refused_not_guessed() {
        let mut huge = vec![1, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(Frame::decode(&mut huge), Err(FrameError::TooLarge(u32::MAX as usize)));
        let mut unknown = vec![9, 0, 0, 0, 0];
        assert_eq!(Frame::decode(&mut unknown), Err(FrameError::UnknownKind(9)));
        let mut short_resize = vec![4, 0, 0, 0, 2, 0, 80];
        assert_eq!(Frame::decode(&mut short_resize), Err(FrameError::Malformed("resize")));
    }

    #[tokio::test]
    async fn a_reader_sees_a_clean_end_and_a_cut_frame_apart() {
        let mut wire = Vec::new();
        Frame::Stdout(b"hi".to_vec()).encode(&mut wire);
        let mut r = FrameReader::new(&wire[..]);
        assert_eq!(r.next().await.unwrap(), Some(Frame::Stdout(b"hi".to_vec())));
        assert_eq!(r.next().await.unwrap(), None);
        let mut r = FrameReader::new(&wire[..wire.len() - 1]);
        assert_eq!(r.next().await.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
