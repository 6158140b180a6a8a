//! The hosts network against the real kernel: the CLI reaches a host by its address, hosts
//! reach each other, and nothing of the network remains after `destroy`. Needs root (CI is).

mod support;
use support::in_netns;

use stack::netns::{netns_path, HostNetwork};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

fn echo_once(listener: TcpListener) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).expect("read");
            s.write_all(&buf).expect("write");
        }
    })
}

fn round_trip(addr: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    buf.to_vec()
}

#[tokio::test]
async fn hosts_reach_each_other_by_address_and_leave_nothing_behind() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the hosts network needs root"
    );
    let net = HostNetwork::plan("tst", 250, &["alpha", "beta"]).unwrap();
    net.create().await.expect("create network");
    let alpha = net.host("alpha").unwrap().clone();
    let beta = net.host("beta").unwrap().clone();
    let target = SocketAddr::from((alpha.addr, 7000));

    let listener = in_netns(&alpha.netns, move || {
        TcpListener::bind(target).expect("bind")
    });
    let server = echo_once(listener);
    // From the workstation (this namespace) and from the other host.
    assert_eq!(round_trip(target), b"hello");
    assert_eq!(in_netns(&beta.netns, move || round_trip(target)), b"hello");
    server.join().unwrap();
    // The host's address does not exist in our namespace: it is not a local listener.
    assert!(TcpListener::bind(target).is_err());

    net.destroy().await.expect("destroy");
    for host in &net.hosts {
        assert!(
            !netns_path(&host.netns).exists(),
            "{} left behind",
            host.netns
        );
    }
    assert!(!netns_path("ostst-switch").exists());
    let links = std::process::Command::new("ip")
        .args(["-br", "link"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("ostst"));
}
