//! A TCP link the test controls (Toxiproxy's idea): put between an agent and the server, `cut`
//! drops every connection through it and refuses new ones, as a partition does; `restore` lets
//! them through again. Loopback only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Link {
    /// Where to connect instead of the target (`127.0.0.1:port`).
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
        if *cut.borrow() {
            refused.fetch_add(1, Ordering::Relaxed);
            drop(conn);
            continue;
        }
        let target = target.clone();
        let mut cut = cut.clone();
        tokio::spawn(async move {
            let Ok(mut upstream) = TcpStream::connect(&target).await else { return };
            let mut conn = conn;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream) => {}
                _ = cut.wait_for(|c| *c) => {}
            }
        });
    }
}
