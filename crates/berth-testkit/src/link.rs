//! A TCP link the test controls (Toxiproxy's idea): put between an agent and the server, `cut`
//! drops every connection through it and refuses new ones, as a partition does; `restore` lets
//! them through again. Loopback only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Link {
    /// Where to connect instead of the target: `127.0.0.1:port`, or a socket path.
    pub addr: String,
    cut: watch::Sender<bool>,
    refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// A link to `target` (`host:port`), open.
    pub async fn start(target: &str) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the link");
        let addr = listener.local_addr().expect("link address").to_string();
        let (cut, cut_rx) = watch::channel(false);
        let refused = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, target.to_string(), cut_rx, refused.clone()));
        Link { addr, cut, refused, task }
    }

    /// A link to the Unix socket at `target` (a Docker engine's, say), served at a new socket
    /// in `dir`: cutting it is the engine no longer answering.
    pub async fn start_unix(target: &str, dir: &std::path::Path) -> Link {
        let path = dir.join("link.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind the unix link");
        let (cut, cut_rx) = watch::channel(false);
        let refused = Arc::new(AtomicU64::new(0));
        let target = target.to_string();
        let task = tokio::spawn(serve_unix(listener, target, cut_rx, refused.clone()));
        Link { addr: path.display().to_string(), cut, refused, task }
    }

    /// Drops every connection through the link; new ones are closed as soon as they come.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// Connections closed at once because the link was cut.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, target: String, cut: watch::Receiver<bool>, refused: Arc<AtomicU64>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else { continue };
        carry(conn, TcpStream::connect(target.clone()), &cut, &refused);
    }
}

async fn serve_unix(
    listener: tokio::net::UnixListener,
    target: String,
    cut: watch::Receiver<bool>,
    refused: Arc<AtomicU64>,
) {
    loop {
        let Ok((conn, _)) = listener.accept().await else { continue };
        carry(conn, tokio::net::UnixStream::connect(target.clone()), &cut, &refused);
    }
}

/// Carries one accepted connection to the target until either side ends or the link is cut;
/// while the link is cut, closes it at once.
fn carry<C, U>(
    conn: C,
    upstream: impl std::future::Future<Output = std::io::Result<U>> + Send + 'static,
    cut: &watch::Receiver<bool>,
    refused: &AtomicU64,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if *cut.borrow() {
        refused.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut cut = cut.clone();
    tokio::spawn(async move {
        let Ok(mut upstream) = upstream.await else { return };
        let mut conn = conn;
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream) => {}
            _ = cut.wait_for(|c| *c) => {}
        }
    });
}
