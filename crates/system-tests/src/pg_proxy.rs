//! A PostgreSQL wire-protocol proxy for tests of lost connections. It forwards every byte both
//! ways and, when armed, cuts a connection at an exact point of a COMMIT — after the server
//! committed but before the client hears it (the answer is lost: the client cannot tell what
//! happened), or before the server receives it (the transaction is aborted) — and it can refuse
//! new connections for a while (the database unreachable). A real network loses a COMMIT's
//! answer rarely and at random; the proxy does it on cue, so the tests are deterministic.
//!
//! Only plain connections are understood (`sslmode=disable` in the URL it hands out): the
//! messages are framed (type byte + length) to find a COMMIT, never parsed beyond that.

use sqlx::postgres::PgConnectOptions;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Control {
    /// Cut the connection instead of forwarding the next N `COMMIT` answers.
    lose_commit_answers: AtomicU32,
    /// Cut the connection instead of forwarding the next N `COMMIT` requests.
    drop_commits: AtomicU32,
    /// Close new connections at once.
    refuse: AtomicBool,
    /// Set `refuse` at the next cut.
    refuse_after_cut: AtomicBool,
    /// Connections cut so far (by either of the first two).
    cuts: AtomicU32,
}

/// Where the proxy forwards to.
#[derive(Clone)]
enum Upstream {
    Unix(std::path::PathBuf),
    Tcp(String),
}

pub struct PgProxy {
    /// The database URL through the proxy.
    pub url: String,
    control: Arc<Control>,
    task: JoinHandle<()>,
}

impl PgProxy {
    /// A proxy in front of the database of `database_url` (a URL the tests' PostgreSQL takes).
    pub async fn start(database_url: &str) -> PgProxy {
        let options = PgConnectOptions::from_str(database_url).expect("a PostgreSQL URL");
        let upstream = match options.get_socket() {
            Some(dir) => Upstream::Unix(dir.join(format!(".s.PGSQL.{}", options.get_port()))),
            None => Upstream::Tcp(format!("{}:{}", options.get_host(), options.get_port())),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let mut url = reqwest::Url::parse(database_url).expect("a database URL");
        url.set_host(Some("127.0.0.1")).expect("set host");
        url.set_port(Some(port)).expect("set port");
        url.set_query(Some("sslmode=disable"));
        let control = Arc::new(Control::default());
        let task = tokio::spawn(accept_loop(listener, upstream, control.clone()));
        PgProxy {
            url: url.to_string(),
            control,
            task,
        }
    }

    /// The next COMMIT is executed by the server, and its answer never reaches the client:
    /// the connection is cut instead.
    pub fn lose_next_commit_answer(&self) {
        self.control
            .lose_commit_answers
            .fetch_add(1, Ordering::SeqCst);
    }

    /// The next COMMIT never reaches the server: the connection is cut instead (the server
    /// rolls the transaction back).
    pub fn drop_next_commit(&self) {
        self.control.drop_commits.fetch_add(1, Ordering::SeqCst);
    }

    /// While set, a new connection is closed as soon as it is accepted.
    pub fn refuse_connections(&self, refuse: bool) {
        self.control.refuse.store(refuse, Ordering::SeqCst);
    }

    /// At the next cut, start refusing new connections (until `refuse_connections(false)`):
    /// whoever lost the COMMIT cannot ask the database what became of it.
    pub fn refuse_connections_after_the_cut(&self) {
        self.control.refuse_after_cut.store(true, Ordering::SeqCst);
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u32 {
        self.control.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: Upstream, control: Arc<Control>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        if control.refuse.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let (upstream, control) = (upstream.clone(), control.clone());
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            match upstream {
                Upstream::Unix(path) => {
                    if let Ok(server) = UnixStream::connect(path).await {
                        relay(client, server, control).await;
                    }
                }
                Upstream::Tcp(address) => {
                    if let Ok(server) = TcpStream::connect(address).await {
                        relay(client, server, control).await;
                    }
                }
            }
        });
    }
}

/// Both directions until either side closes or a cut; dropping the sockets closes both.
async fn relay<S>(client: TcpStream, server: S, control: Arc<Control>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    let to_server = forward(client_read, server_write, Direction::ToServer, &control);
    let to_client = forward(server_read, client_write, Direction::ToClient, &control);
    tokio::select! {
        _ = to_server => {}
        _ = to_client => {}
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToServer,
    ToClient,
}

/// Copies whole protocol messages; returns when the source closes, the sink fails or the
/// connection is cut.
async fn forward<R, W>(mut from: R, mut to: W, direction: Direction, control: &Control)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // The client's first message (startup) has no type byte; everything after does.
    let mut untyped_first = direction == Direction::ToServer;
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buffer[..n]);
        let mut sendable = 0;
        while let Some((header, length)) = frame(&pending[sendable..], untyped_first) {
            let message = &pending[sendable..sendable + header + length];
            if !untyped_first && cut_here(direction, message, control) {
                if control.refuse_after_cut.swap(false, Ordering::SeqCst) {
                    control.refuse.store(true, Ordering::SeqCst);
                }
                control.cuts.fetch_add(1, Ordering::SeqCst);
                // Forward what came before the cut message, then close both sides.
                let _ = to.write_all(&pending[..sendable]).await;
                let _ = to.shutdown().await;
                return;
            }
            untyped_first = false;
            sendable += header + length;
        }
        if sendable > 0 {
            if to.write_all(&pending[..sendable]).await.is_err() {
                return;
            }
            pending.drain(..sendable);
        }
    }
}

/// The next whole message at the start of `bytes`: (header length, body length), where the
/// declared length counts itself but not the type byte.
fn frame(bytes: &[u8], untyped: bool) -> Option<(usize, usize)> {
    let header = if untyped { 4 } else { 5 };
    let start = header - 4;
    let declared = u32::from_be_bytes(bytes.get(start..start + 4)?.try_into().ok()?) as usize;
    let body = declared.checked_sub(4)?;
    (bytes.len() >= header + body).then_some((header, body))
}

fn cut_here(direction: Direction, message: &[u8], control: &Control) -> bool {
    let (kind, body) = (message[0], &message[5..]);
    match direction {
        // A simple query `COMMIT`, or a statement `COMMIT` being prepared.
        Direction::ToServer if kind == b'Q' || kind == b'P' => {
            is_commit_text(body, kind) && take_one(&control.drop_commits)
        }
        // CommandComplete whose tag is COMMIT: the transaction committed.
        Direction::ToClient if kind == b'C' => {
            body == b"COMMIT\0" && take_one(&control.lose_commit_answers)
        }
        _ => false,
    }
}

fn is_commit_text(body: &[u8], kind: u8) -> bool {
    // Parse: statement name, then the query text; Query: the text.
    let text = if kind == b'P' {
        let Some(end) = body.iter().position(|b| *b == 0) else {
            return false;
        };
        &body[end + 1..]
    } else {
        body
    };
    let text = text.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(text)
        .trim()
        .trim_end_matches(';')
        .eq_ignore_ascii_case("COMMIT")
}

fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}
