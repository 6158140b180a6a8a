//! Network faults against the real kernel: partitions (both ways and one way), loss and delay
//! between hosts that are network namespaces, and `heal` lifting each. Needs root (CI is).
//!
//! The tests share one network (tag `nf`, 10.213.251.0/24) and so run one at a time; each
//! creates it afresh and a guard removes it, also when an assertion fails.

mod support;
use support::in_netns;

use loadtest::chaos::network;
use stack::netns::{Host, HostNetwork};
use stack::{process, StateDir};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One network at a time (they share a tag and a subnet).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A connect attempt across a partition is given this long before it counts as cut.
const CUT: Duration = Duration::from_millis(700);
const PORT: u16 = 7300;

/// The network, its state directory, and their removal however the test ends.
struct Net {
    net: HostNetwork,
    state: StateDir,
    dir: PathBuf,
    a: Host,
    b: Host,
    c: Host,
}

impl Net {
    async fn create() -> Net {
        assert_eq!(unsafe { libc::geteuid() }, 0, "network faults need root");
        network::ensure_tools().await.expect("iptables");
        let net = HostNetwork::plan("nf", 251, &["a", "b", "c"]).unwrap();
        let dir = std::env::temp_dir().join(format!("ordersys-netfaults-{}", std::process::id()));
        let state = StateDir::at(&dir).unwrap();
        net.create().await.expect("create network");
        let host = |n: &str| net.host(n).unwrap().clone();
        let (a, b, c) = (host("a"), host("b"), host("c"));
        Net {
            net,
            state,
            dir,
            a,
            b,
            c,
        }
    }

    async fn heal(&self) {
        network::heal(&self.net, &self.state).await.expect("heal");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Drop cannot await, and this thread is inside the test's runtime: a runtime of our own
        // on another thread stops the delayers by PID, then removes the namespaces.
        let net = self.net.clone();
        let state = self.state.clone();
        let dir = self.dir.clone();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Err(e) = network::heal(&net, &state).await {
                    eprintln!("heal on cleanup: {e:#}");
                }
                if let Err(e) = net.destroy().await {
                    eprintln!("destroy on cleanup: {e:#}");
                }
            });
            std::fs::remove_dir_all(dir).ok();
        });
        cleanup.join().ok();
    }
}

/// A listener on `host`'s address (the kernel completes handshakes without `accept`).
fn listen(host: &Host) -> TcpListener {
    let addr = SocketAddr::from((host.addr, PORT));
    in_netns(&host.netns, move || TcpListener::bind(addr).expect("bind"))
}

/// Can `from` open a TCP connection to `to` within [`CUT`]? Timing out is `false`; any other
/// failure (e.g. a refusal) fails the test, since a partition must drop, not reject.
fn connects(from: &Host, to: &Host) -> bool {
    let target = SocketAddr::from((to.addr, PORT));
    in_netns(&from.netns, move || {
        match TcpStream::connect_timeout(&target, CUT) {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::TimedOut => false,
            Err(e) => panic!("connect to {target}: {e} (a partition must drop, not refuse)"),
        }
    })
}

/// Does one datagram from `from` reach `to`? The sender must never see an error.
fn datagram_arrives(from: &Host, to: &Host) -> bool {
    let (sent, received) = udp_burst(from, to, 1, Duration::from_millis(500));
    assert_eq!(sent, 1);
    received == 1
}

/// Sends `n` numbered datagrams from `from` to `to`; how many were sent without error and how
/// many distinct ones arrived (the receiver stops after `quiet` without any).
fn udp_burst(from: &Host, to: &Host, n: u32, quiet: Duration) -> (u32, u32) {
    let dest = SocketAddr::from((to.addr, PORT + 1));
    let receiver = in_netns(&to.netns, move || UdpSocket::bind(dest).expect("bind udp"));
    receiver.set_read_timeout(Some(quiet)).unwrap();
    let counting = std::thread::spawn(move || {
        let mut seen = std::collections::BTreeSet::new();
        let mut buf = [0u8; 16];
        while let Ok(len) = receiver.recv(&mut buf) {
            if len == 4 {
                seen.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
            }
        }
        seen.len() as u32
    });
    let src = SocketAddr::from((from.addr, 0));
    let sent = in_netns(&from.netns, move || {
        let socket = UdpSocket::bind(src).expect("bind udp");
        let mut sent = 0;
        for i in 0..n {
            match socket.send_to(&i.to_be_bytes(), dest) {
                Ok(_) => sent += 1,
                Err(e) => eprintln!("datagram {i}: {e}"),
            }
            if i % 50 == 49 {
                // Let the receiver keep up: its buffer, not the fault, must not drop any.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        sent
    });
    (sent, counting.join().unwrap())
}

/// Our rules in force that mention `needle`.
async fn rules_with(net: &HostNetwork, needle: &str) -> Vec<String> {
    let all = network::applied(net).await.expect("list rules");
    all.into_iter().filter(|r| r.contains(needle)).collect()
}

#[tokio::test]
async fn a_partition_both_ways_cuts_exactly_the_named_hosts_until_healed() {
    let _serial = SERIAL.lock().await;
    let n = Net::create().await;
    n.heal().await; // nothing applied yet: a no-op
    let _listeners = [listen(&n.a), listen(&n.b), listen(&n.c)];
    assert!(connects(&n.a, &n.b), "before the fault");

    for _ in 0..2 {
        network::partition(&n.net, &["a"], &["b"], true)
            .await
            .unwrap();
    }
    // Applied twice, one rule in each of the two hosts.
    assert_eq!(rules_with(&n.net, "-j DROP").await.len(), 2);
    assert!(!connects(&n.a, &n.b), "a → b must time out");
    assert!(!connects(&n.b, &n.a), "b → a must time out");
    assert!(
        connects(&n.a, &n.c) && connects(&n.c, &n.a),
        "a ↔ c untouched"
    );
    assert!(
        connects(&n.b, &n.c) && connects(&n.c, &n.b),
        "b ↔ c untouched"
    );
    assert!(!datagram_arrives(&n.a, &n.b) && !datagram_arrives(&n.b, &n.a));

    n.heal().await;
    n.heal().await; // twice is fine
    assert!(rules_with(&n.net, "-j").await.is_empty());
    assert!(connects(&n.a, &n.b) && connects(&n.b, &n.a), "healed");
}

#[tokio::test]
async fn a_one_way_partition_drops_what_a_sends_to_b_so_tcp_fails_both_ways() {
    let _serial = SERIAL.lock().await;
    let n = Net::create().await;
    let _listeners = [listen(&n.a), listen(&n.b), listen(&n.c)];

    network::partition(&n.net, &["a"], &["b"], false)
        .await
        .unwrap();
    assert_eq!(rules_with(&n.net, "-j DROP").await.len(), 1);
    assert!(!connects(&n.a, &n.b), "a → b: a's SYN is dropped");
    // b's SYN reaches a, but a's SYN-ACK is dropped at b: the connection never opens.
    assert!(!connects(&n.b, &n.a), "b → a: a's replies are dropped");
    // What does get through from b to a: datagrams, which need no reply.
    assert!(datagram_arrives(&n.b, &n.a), "b → a datagrams arrive");
    assert!(!datagram_arrives(&n.a, &n.b), "a → b datagrams are lost");
    assert!(connects(&n.a, &n.c) && connects(&n.c, &n.b), "c untouched");

    n.heal().await;
    assert!(connects(&n.a, &n.b) && connects(&n.b, &n.a), "healed");
}

#[tokio::test]
async fn loss_drops_about_the_share_asked_for_silently_until_healed() {
    let _serial = SERIAL.lock().await;
    let n = Net::create().await;
    const SENT: u32 = 500;
    let quiet = Duration::from_millis(500);

    network::loss(&n.net, "a", 50.0).await.unwrap();
    network::loss(&n.net, "a", 20.0).await.unwrap(); // replaces, does not stack
    assert_eq!(rules_with(&n.net, "statistic").await.len(), 1);
    let (sent, received) = udp_burst(&n.a, &n.b, SENT, quiet);
    // Lost in the network, not refused to the sender.
    assert_eq!(sent, SENT, "the sender saw errors");
    let lost = SENT - received;
    // Binomial(500, 0.2): mean 100, σ ≈ 8.9; 50..=150 is more than 5.5 σ either side.
    eprintln!("loss 20 %: {lost} of {SENT} datagrams lost");
    assert!((50..=150).contains(&lost), "{lost} of {SENT} lost");
    // Only a's sending is lossy.
    let (_, back) = udp_burst(&n.b, &n.a, SENT, quiet);
    assert_eq!(back, SENT, "b → a lost datagrams");

    n.heal().await;
    assert!(rules_with(&n.net, "statistic").await.is_empty());
    let (_, received) = udp_burst(&n.a, &n.b, SENT, quiet);
    assert_eq!(received, SENT, "lost after heal");
}

/// An echo server on `host` for one connection, one byte at a time.
fn echo(host: &Host) -> std::thread::JoinHandle<()> {
    let listener = listen(host);
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).unwrap();
        let mut byte = [0u8; 1];
        while s.read_exact(&mut byte).is_ok() {
            if s.write_all(&byte).is_err() {
                break;
            }
        }
    })
}

/// `n` one-byte round trips on `stream`, each timed.
fn round_trips(stream: &mut TcpStream, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    let mut byte = [7u8; 1];
    for _ in 0..n {
        let start = Instant::now();
        stream.write_all(&byte).unwrap();
        stream.read_exact(&mut byte).unwrap();
        times.push(start.elapsed());
    }
    times
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

#[tokio::test]
async fn delay_holds_what_a_host_sends_and_its_delayer_is_gone_after_heal() {
    let _serial = SERIAL.lock().await;
    let n = Net::create().await;
    let program = PathBuf::from(env!("CARGO_BIN_EXE_loadtest"));
    let server = echo(&n.b);
    let target = SocketAddr::from((n.b.addr, PORT));
    let mut stream = in_netns(&n.a.netns, move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("connect")
    });
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let before = median(&round_trips(&mut stream, 20));

    let (d, j) = (Duration::from_millis(50), Duration::from_millis(10));
    network::delay(&n.net, "a", d, j, &n.state, &program)
        .await
        .unwrap();
    let first = network::delayer_pid(&n.state, &n.a).expect("a delayer runs");
    network::delay(&n.net, "a", d, j, &n.state, &program)
        .await
        .unwrap();
    let pid = network::delayer_pid(&n.state, &n.a).expect("a delayer runs");
    assert!(!process::is_alive(first), "the first delayer was replaced");
    assert_eq!(rules_with(&n.net, "NFQUEUE").await.len(), 1);

    let delayed = round_trips(&mut stream, 40);
    let (min, max, mid) = (
        *delayed.iter().min().unwrap(),
        *delayed.iter().max().unwrap(),
        median(&delayed),
    );
    eprintln!(
        "before: median {before:?}; delayed 50 ± 10 ms: min {min:?}, median {mid:?}, max {max:?}"
    );
    assert!(min >= Duration::from_millis(40), "min {min:?}");
    assert!(max <= Duration::from_millis(300), "max {max:?}");
    assert!(
        mid >= Duration::from_millis(44) && mid <= Duration::from_millis(58),
        "median {mid:?}"
    );

    n.heal().await;
    assert!(!process::is_alive(pid), "the delayer outlived heal");
    assert_eq!(network::delayer_pid(&n.state, &n.a), None);
    assert!(rules_with(&n.net, "NFQUEUE").await.is_empty());
    // The same connection carries on, undelayed: nothing held was lost.
    let after = median(&round_trips(&mut stream, 20));
    eprintln!("after heal: median {after:?}");
    assert!(after < Duration::from_millis(5), "after heal {after:?}");
    drop(stream);
    server.join().unwrap();
}
