//! A TCP link the test controls (Toxiproxy's idea): put between an agent and the server, `cut`
//! drops every connection through it and refuses new ones, as a partition does; `silence` is the
//! quieter partition, where packets vanish: connections stay open and carry nothing, then or
//! ever after; `restore` lets new connections through again. Loopback only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Link {
    /// Where to connect instead of the target: `127.0.0.1:port`, or a socket path.
    pub addr: String,
    cut: watch::Sender<Flow>,
    refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// A link to `target` (`host:port`), open.
    pub async fn start(target: &str) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the link");
        let addr = listener.local_addr().expect("link address").to_string();
        let (cut, cut_rx) = watch::channel(Flow::Open);
        let refused = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, target.to_string(), cut_rx, refused.clone()));
        Link { addr, cut, refused, task }
    }

    /// A link to the Unix socket at `target` (a Docker engine's, say), served at a new socket
    /// in `dir`: cutting it is the engine no longer answering.
    pub async fn start_unix(target: &str, dir: &std::path::Path) -> Link {
        let path = dir.join("link.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind the unix link");
        let (cut, cut_rx) = watch::channel(Flow::Open);
        let refused = Arc::new(AtomicU64::new(0));
        let target = target.to_string();
        let task = tokio::spawn(serve_unix(listener, target, cut_rx, refused.clone()));
        Link { addr: path.display().to_string(), cut, refused, task }
    }

    /// Drops every connection through the link; new ones are closed as soon as they come.
    pub fn cut(&self) {
        self.cut.send_replace(Flow::Cut);
    }

    /// Stops carrying bytes without closing anything: open connections hang, for good (as
    /// after a partition whose packets were dropped, until TCP gives up), and new ones are
    /// accepted and hang too.
    pub fn silence(&self) {
        self.cut.send_replace(Flow::Silent);
    }

    pub fn restore(&self) {
        self.cut.send_replace(Flow::Open);
    }

    /// Connections closed at once because the link was cut.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Open,
    Cut,
    Silent,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, target: String, cut: watch::Receiver<Flow>, refused: Arc<AtomicU64>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else { continue };
        carry(conn, TcpStream::connect(target.clone()), &cut, &refused);
    }
}

async fn serve_unix(
    listener: tokio::net::UnixListener,
    target: String,
    cut: watch::Receiver<Flow>,
    refused: Arc<AtomicU64>,
) {
    loop {
        let Ok((conn, _)) = listener.accept().await else { continue };
        carry(conn, tokio::net::UnixStream::connect(target.clone()), &cut, &refused);
    }
}

/// Carries one accepted connection to the target until either side ends or the link is cut;
/// while the link is cut, closes it at once; once it is silenced, holds it open and idle until
/// the link is cut or dropped.
fn carry<C, U>(
    conn: C,
    upstream: impl std::future::Future<Output = std::io::Result<U>> + Send + 'static,
    cut: &watch::Receiver<Flow>,
    refused: &AtomicU64,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut flow = cut.clone();
    match *cut.borrow() {
        Flow::Cut => {
            refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Flow::Silent => {
            tokio::spawn(async move {
                let _held = conn;
                let _ = flow.wait_for(|f| *f == Flow::Cut).await;
            });
            return;
        }
        Flow::Open => {}
    }
    tokio::spawn(async move {
        let Ok(mut upstream) = upstream.await else { return };
        let mut conn = conn;
        let stopped = tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream) => return,
            f = flow.wait_for(|f| *f != Flow::Open) => f.map(|f| *f),
        };
        if matches!(stopped, Ok(Flow::Silent)) {
            // Both ends stay open and hear nothing, even once the link is restored.
            let _ = flow.wait_for(|f| *f == Flow::Cut).await;
        }
    });
}
