//! A TCP proxy that plays a failing server: cut, muted or reset on demand.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

/// A TCP proxy on 127.0.0.1 in front of `upstream`. While cut, it drops every
/// open connection and closes new ones at once, like a dead server. While
/// muted, it passes what clients send but drops what the server answers.
pub struct FaultProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    muted: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    stop: CancellationToken,
}

impl FaultProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fault proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cut = Arc::new(AtomicBool::new(false));
        let muted = Arc::new(AtomicBool::new(false));
        let generation = watch::Sender::new(0u64);
        let stop = CancellationToken::new();
        let (cut_flag, generations, stopped) = (Arc::clone(&cut), generation.clone(), stop.clone());
        let muted_flag = Arc::clone(&muted);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((client, _)) = accepted else { continue };
                if cut_flag.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cuts = generations.subscribe();
                let stopped = stopped.clone();
                let muted = Arc::clone(&muted_flag);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let never_muted = Arc::new(AtomicBool::new(false));
                    let both = futures::future::join(
                        forward(client_read, server_write, never_muted),
                        forward(server_read, client_write, muted),
                    );
                    tokio::select! {
                        _ = both => {}
                        _ = cuts.changed() => {}
                        _ = stopped.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, cut, muted, generation, stop }
    }

    /// The address clients should dial instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// From now on, drops what the server sends on every connection (open or
    /// new) instead of passing it on, until [`Self::reset`]: the server does
    /// what it is asked and nobody hears its answer.
    pub fn mute(&self) {
        self.muted.store(true, Ordering::SeqCst);
    }

    /// Drops every open connection, as a server's end would, and lets later
    /// ones through unmuted.
    pub fn reset(&self) {
        self.generation.send_modify(|g| *g += 1);
        self.muted.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` (dropping the bytes while `muted`) until `from`
/// ends, then ends `to`.
async fn forward(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, muted: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !muted.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
