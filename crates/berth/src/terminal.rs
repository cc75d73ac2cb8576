//! The terminal under a live view: keys read one at a time without echo, and the terminal's
//! settings put back however the view ends.

use std::io::{IsTerminal, Read};
use std::sync::Arc;

use nix::sys::termios::{self, LocalFlags, SetArg, Termios};
use tokio::sync::Notify;

/// Keys from the terminal while a live view runs; dropping it restores the terminal.
pub struct Keys {
    saved: Termios,
    quit: Arc<Notify>,
}

impl Keys {
    /// None when stdin is not a terminal (there are no keys to read then).
    pub fn start() -> Option<Keys> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        // Byte by byte, unechoed; Ctrl-C still interrupts.
        raw.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        let quit = Arc::new(Notify::new());
        let notify = quit.clone();
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while let Ok(1) = std::io::stdin().read(&mut byte) {
                if matches!(byte[0], b'q' | b'Q') {
                    notify.notify_one();
                    return;
                }
            }
        });
        Some(Keys { saved, quit })
    }

    /// Resolves when `q` is pressed.
    pub async fn quit(&self) {
        self.quit.notified().await;
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// The terminal in raw mode while a remote program owns it (`exec -t`): every key goes to the
/// program, Ctrl-C included; dropping it restores the terminal.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// None when stdin is not a terminal.
    pub fn enable() -> Option<RawMode> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// The size of the terminal on stdin, if it is one.
pub fn size() -> Option<berth_api::exec_stream::TermSize> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdin()).ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some(berth_api::exec_stream::TermSize { cols: ws.ws_col, rows: ws.ws_row })
}

/// One line typed at the terminal on stdin, not echoed (a secret's value); the prompt goes to
/// stderr. The terminal's settings come back however the read ends.
pub fn read_hidden(prompt: &str) -> std::io::Result<String> {
    struct Restore(Termios);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0);
        }
    }
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(&stdin).map_err(std::io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    termios::tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(std::io::Error::from)?;
    let _restore = Restore(saved);
    eprint!("{prompt}");
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    eprintln!();
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
