//! The accept loop behind [`crate::serve`], for plain HTTP/1.1 and TLS alike: one task per
//! connection, and the limits that keep the server answering when clients are slow or hostile.
//!
//! - A request line and header are at most [`MAX_HEADER_BYTES`].
//! - A connection must deliver a complete request header within `header_read_timeout` (idle
//!   keep-alive connections included; for TLS, the handshake too), and a request body may not
//!   stall for longer than `body_read_timeout`; the whole request is bounded by the request
//!   deadline in `lib.rs`.
//! - At most `max_connections` connections are open at once. When that many are, a new
//!   connection evicts the one that has waited longest for a request header: a slowloris holds
//!   only such connections, while a real client sends its header at once, so `/healthz` and
//!   Terraform keep being served. A request counts as still waiting (the newest, from its
//!   header on) until it is authenticated ([`admitted`]: `auth::authorize`, the console's
//!   session) or its body has arrived: the forge login and the console's sign-in read a body
//!   before any credential is checked, and a client trickling such a body a byte at a time
//!   would otherwise hold its slot until the request timeout. Only when every open connection
//!   is inside an admitted request is the new one refused (plain HTTP: a 503 written before
//!   closing).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

/// The largest request line and header a connection reads (hyper's buffer; ~400 KB by
/// default): past it, hyper answers 431 and closes. Terraform, the CLI and browsers send a few
/// hundred bytes; a method or path as long as the buffer is an attacker's.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How patient the server is with one connection, and how many it keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight finish
/// (at most one request timeout).
pub(crate) async fn run(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let registry = Arc::new(Registry::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            conn = listener.accept() => match conn {
                Ok(c) => c,
                // Out of file descriptors and the like: pause instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(permit) = slot(&slots, &registry).await else {
            refuse(&tcp, tls.is_some());
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = registry.open();
        let (app, tls, registry, stop) =
            (app.clone(), tls.clone(), registry.clone(), stop_rx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _open = Open {
                registry: Arc::clone(&registry),
                conn: Arc::clone(&conn),
            };
            let served = Served {
                app,
                peer,
                limits,
                registry,
                conn: Arc::clone(&conn),
            };
            match tls {
                None => served.connection(tcp, stop).await,
                Some(acceptor) => {
                    // One deadline for the first byte and the whole handshake.
                    let handshake = async {
                        if !speaks_tls(&tcp).await {
                            answer_plain_http_on_tls_port(tcp).await;
                            return None;
                        }
                        acceptor.accept(tcp).await.ok()
                    };
                    let handshake = tokio::time::timeout(limits.header_read_timeout, handshake);
                    let stream = tokio::select! {
                        s = handshake => s.ok().flatten(),
                        () = conn.evict.notified() => None,
                    };
                    if let Some(stream) = stream {
                        served.connection(stream, stop).await;
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.request_timeout, slots.acquire_many(all)).await;
    Ok(())
}

/// A connection slot: free, or freed by evicting the connection that has waited longest for a
/// request header. `None` when every open connection is inside a request.
async fn slot(slots: &Arc<Semaphore>, registry: &Registry) -> Option<OwnedSemaphorePermit> {
    if let Ok(p) = Arc::clone(slots).try_acquire_owned() {
        return Some(p);
    }
    if !registry.evict_oldest_waiting() {
        return None;
    }
    // The evicted task drops its connection (and its slot) as soon as it runs.
    tokio::time::timeout(Duration::from_secs(1), Arc::clone(slots).acquire_owned())
        .await
        .ok()?
        .ok()
}

/// Closes a connection the server has no slot for; plain HTTP clients get a 503 first.
fn refuse(tcp: &TcpStream, tls: bool) {
    if tls {
        return;
    }
    let body = r#"{"error":{"code":"overloaded","message":"the airlock server is at its connection limit and every connection is busy; retry shortly"}}"#;
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Best effort and never blocking: a fresh socket's send buffer holds this.
    let _ = tcp.try_write(resp.as_bytes());
}

/// Whether the client opened with a TLS handshake record (0x16) rather than plain HTTP.
async fn speaks_tls(tcp: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) => first[0] == 0x16,
        // Closed or failed: let the handshake fail on its own.
        _ => true,
    }
}

/// A plain HTTP request reached the TLS port: say so in HTTP, which the client can read.
async fn answer_plain_http_on_tls_port(mut tcp: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":{"code":"tls_required","message":"this airlock server speaks HTTPS: use an https:// URL (AIRLOCK_URL, TF_HTTP_ADDRESS)"}}"#;
    let resp = format!(
        "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        tcp.write_all(resp.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

/// One accepted connection and what serving it needs.
struct Served {
    app: axum::Router,
    peer: SocketAddr,
    limits: Limits,
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl Served {
    async fn connection<I>(self, io: I, mut stop: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Served {
            app,
            peer,
            limits,
            registry,
            conn,
        } = self;
        let evict = Arc::clone(&conn);
        let service = tower::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            // A complete header arrived. The connection stays a candidate for eviction until the
            // request is admitted (authenticated, or its body arrived), the newest one meanwhile,
            // and then until its response has been sent.
            registry.waiting(&conn);
            let admission = Admission {
                registry: Arc::clone(&registry),
                conn: Arc::clone(&conn),
            };
            let back_to_waiting = Rearm {
                registry: Arc::clone(&registry),
                conn: Arc::clone(&conn),
            };
            let arrived = admission.clone();
            let mut req =
                req.map(|b| Body::new(StallTimeout::new(b, limits.body_read_timeout, arrived)));
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(admission);
            let app = app.clone();
            async move {
                let resp = app.oneshot(req).await.unwrap_or_else(|e| match e {});
                // The guard lives as long as the response body, so the connection waits for a
                // header again only once the response has been written.
                Ok::<_, Infallible>(resp.map(move |b| {
                    Body::new(b.map_frame(move |f| {
                        let _ = &back_to_waiting;
                        f
                    }))
                }))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(MAX_HEADER_BYTES);
        let served = builder.serve_connection(
            hyper_util::rt::TokioIo::new(io),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let mut served = pin!(served);
        let mut draining = *stop.borrow();
        if draining {
            served.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                _ = served.as_mut() => return,
                () = evict.evict.notified() => return,
                changed = stop.changed(), if !draining => {
                    draining = true;
                    if changed.is_ok() {
                        served.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// One open connection, as the registry sees it.
#[derive(Default)]
struct Conn {
    /// Its place in the waiting queue (0: not waiting). Changed only under the registry lock.
    seq: AtomicU64,
    closed: AtomicBool,
    evict: Notify,
}

/// Connections waiting for a request header, oldest first.
#[derive(Default)]
struct Registry {
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    next: u64,
    by_age: BTreeMap<u64, Arc<Conn>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new connection: waiting for its first header.
    fn open(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn::default());
        self.waiting(&conn);
        conn
    }

    fn waiting(&self, conn: &Arc<Conn>) {
        let mut w = self.lock();
        if conn.closed.load(Ordering::Relaxed) {
            return;
        }
        let old = conn.seq.load(Ordering::Relaxed);
        w.by_age.remove(&old);
        w.next += 1;
        let seq = w.next;
        conn.seq.store(seq, Ordering::Relaxed);
        w.by_age.insert(seq, Arc::clone(conn));
    }

    fn in_request(&self, conn: &Conn) {
        let mut w = self.lock();
        let seq = conn.seq.swap(0, Ordering::Relaxed);
        w.by_age.remove(&seq);
    }

    fn close(&self, conn: &Conn) {
        let mut w = self.lock();
        conn.closed.store(true, Ordering::Relaxed);
        let seq = conn.seq.swap(0, Ordering::Relaxed);
        w.by_age.remove(&seq);
    }

    /// Tells the connection that has waited longest for a header to close. False if none waits.
    fn evict_oldest_waiting(&self) -> bool {
        let mut w = self.lock();
        match w.by_age.pop_first() {
            Some((_, conn)) => {
                conn.seq.store(0, Ordering::Relaxed);
                conn.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Removes a connection from the registry when its task ends, however it ends.
struct Open {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.registry.close(&self.conn);
    }
}

/// A request's way out of its connection's waiting queue, in the request's extensions.
#[derive(Clone)]
pub(crate) struct Admission {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl Admission {
    fn admit(&self) {
        self.registry.in_request(&self.conn);
    }
}

/// The request whose extensions these are is authenticated: its connection is no longer
/// evicted to make room for a new one, until its response has been sent. Nothing for a request
/// that did not come through [`run`] (`inproc::call`, in-process tests).
pub(crate) fn admitted(extensions: &axum::http::Extensions) {
    if let Some(a) = extensions.get::<Admission>() {
        a.admit();
    }
}

/// Puts a connection back in the waiting queue when its response has been sent.
struct Rearm {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl Drop for Rearm {
    fn drop(&mut self) {
        self.registry.waiting(&self.conn);
    }
}

/// A request body that fails when the client sends nothing for `limit` while the server is
/// reading it (the clock starts at the first read, so a handler that checks permissions before
/// reading is not penalised), and admits its request once it has arrived whole.
struct StallTimeout<B> {
    inner: B,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    arrived: Admission,
}

impl<B> StallTimeout<B> {
    fn new(inner: B, limit: Duration, arrived: Admission) -> Self {
        StallTimeout {
            inner,
            limit,
            timer: None,
            arrived,
        }
    }
}

/// The client stopped sending its request body.
#[derive(Debug)]
struct BodyStalled(Duration);

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the client sent no request body data for {} s",
            self.0.as_secs()
        )
    }
}

impl std::error::Error for BodyStalled {}

impl<B> HttpBody for StallTimeout<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let deadline = tokio::time::Instant::now() + this.limit;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                match this.timer.as_mut() {
                    Some(t) => t.as_mut().reset(deadline),
                    None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                if frame.is_none() || this.inner.is_end_stream() {
                    this.arrived.admit();
                }
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(this.limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
