//! Network faults between the hosts of a [`HostNetwork`]: partitions, packet loss and delay,
//! made with the kernel's firewall (iptables, nft backend) inside the namespaces the network
//! created, and lifted by [`heal`]. Nothing here touches the machine's own namespace.
//!
//! | fault | where | how |
//! | --- | --- | --- |
//! | [`partition`] | each receiving host, chain `ORDERSYS-IN` (from `INPUT`) | `-s <sender> -j DROP` |
//! | [`loss`] | the switch, chain `ORDERSYS` (from `FORWARD`, bridged traffic) | `-s <host> -m statistic --mode random --probability p -j DROP` |
//! | [`delay`] | the host, chain `ORDERSYS-OUT` (from `OUTPUT`) | `-o eth0 -j NFQUEUE --queue-bypass`, and a delayer process ([`delayer`]) in the host that holds each packet |
//!
//! **Why packets are dropped where they arrive.** A packet the sending host's own firewall
//! drops is refused to the sender (`sendto` fails with EPERM, TCP stops sending and waits for a
//! timer), which no network does. So a partition drops at the receiver's `INPUT`, and loss in
//! the switch (the bridge's traffic passes its `FORWARD` chain with `br_netfilter`, which
//! [`loss`] switches on there): the sender sees nothing, as with a cable or a lossy link.
//!
//! **One way.** `partition(from, to, false)` drops what `from` sends to `to`. Packets from
//! `to` still reach `from`, but every reply `from` sends is dropped, so TCP connections fail
//! in both directions (`to`'s SYN arrives, its SYN-ACK never returns) and established ones
//! stall both ways once data must be acknowledged; only datagrams from `to` get through.
//!
//! **Egress only.** [`loss`] and [`delay`] apply to what a host *sends* (its `eth0`, to every
//! other host and to the CLI), like netem on that interface: a round trip from the host to a
//! peer is delayed once (the request), a round trip from a peer to the host once too (the
//! reply); loss of `p` on one host loses about `p` of each round trip's packets.
//!
//! Every apply function is idempotent: the same fault twice leaves one rule (a `loss` or
//! `delay` on a host replaces the previous one on that host). [`heal`] flushes our chains in
//! every host and the switch and stops the delayers by the PIDs in their pidfiles; it is safe
//! when nothing was applied and when called twice. If the CLI dies with a fault applied, the
//! rules and delayers stay until [`heal`] or the network's destruction (deleting the
//! namespaces removes the rules; the delayers must be stopped first, see [`heal`]).

pub mod delayer;

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use delayer::DelaySettings;

use stack::netns::{self, Host, HostNetwork};
use stack::process::{self, DetachedSpec, PidFile};
use stack::StateDir;

/// Our chain in each host, jumped to from `INPUT` (partitions).
pub const CHAIN_IN: &str = "ORDERSYS-IN";
/// Our chain in each host, jumped to from `OUTPUT` (the delay's queue rule).
pub const CHAIN_OUT: &str = "ORDERSYS-OUT";
/// Our chain in the switch, jumped to from `FORWARD` (loss).
pub const SWITCH_CHAIN: &str = "ORDERSYS";
/// The NFQUEUE queue a host's delayer serves (queues belong to a namespace: one per host).
pub const DELAY_QUEUE: u16 = 7;
/// How long a delayer may take to bind its queue.
const DELAYER_READY: Duration = Duration::from_secs(5);
/// How long a delayer may take to release its packets and exit on SIGTERM.
const DELAYER_STOP: Duration = Duration::from_secs(3);

/// Installs `iptables` (Debian's, the nft backend) when missing; errors unless we are root
/// (the rules go into namespaces only root may enter).
pub async fn ensure_tools() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("network faults change firewall rules in the hosts' namespaces: run as root");
    }
    if iptables_binary().is_none() {
        process::apt_install(&["iptables"]).await?;
    }
    if iptables_binary().is_none() {
        bail!("`iptables` is not installed and could not be installed");
    }
    Ok(())
}

fn iptables_binary() -> Option<PathBuf> {
    process::which("iptables").or_else(|| {
        ["/usr/sbin/iptables", "/sbin/iptables"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| process::is_executable(p))
    })
}

/// Hosts `from` can no longer send to hosts `to` (and, `both_ways`, `to` not to `from`): their
/// packets are dropped silently on arrival, so connections time out as across a cut link.
/// See the module documentation for what one way means for TCP.
pub async fn partition(
    net: &HostNetwork,
    from: &[&str],
    to: &[&str],
    both_ways: bool,
) -> Result<()> {
    ensure_tools().await?;
    let from = hosts(net, from)?;
    let to = hosts(net, to)?;
    if from.is_empty() || to.is_empty() {
        bail!("a partition needs hosts on both sides");
    }
    if let Some(h) = from.iter().find(|h| to.iter().any(|t| t.name == h.name)) {
        bail!("host {} is on both sides of the partition", h.name);
    }
    for receiver in &to {
        drop_from(receiver, &from).await?;
    }
    if both_ways {
        for receiver in &from {
            drop_from(receiver, &to).await?;
        }
    }
    Ok(())
}

/// In `receiver`, drops every packet from `senders`.
async fn drop_from(receiver: &Host, senders: &[&Host]) -> Result<()> {
    ensure_chain(&receiver.netns, CHAIN_IN, "INPUT").await?;
    for sender in senders {
        let source = cidr(sender.addr);
        add_rule(&receiver.netns, CHAIN_IN, &["-s", &source, "-j", "DROP"]).await?;
    }
    Ok(())
}

/// `host` loses `percent` of what it sends (0 < percent ≤ 100; 0 lifts its loss), at random,
/// in the switch (see the module documentation). Replaces an earlier loss on the host.
pub async fn loss(net: &HostNetwork, host: &str, percent: f64) -> Result<()> {
    ensure_tools().await?;
    if !(0.0..=100.0).contains(&percent) {
        bail!("loss of {percent} %: between 0 and 100");
    }
    let host = one_host(net, host)?;
    let switch = switch_netns(net)?;
    // Bridged frames pass the IPv4 firewall only with this on (per namespace; the default
    // is on, but nothing else in the switch depends on it being off).
    netns::exec_in(
        &switch,
        "/bin/sh",
        &[
            "-c",
            "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables",
        ],
    )
    .await
    .context("enabling br_netfilter in the switch (the kernel needs CONFIG_BRIDGE_NETFILTER)")?;
    ensure_chain(&switch, SWITCH_CHAIN, "FORWARD").await?;
    let source = cidr(host.addr);
    delete_rules(&switch, SWITCH_CHAIN, &["-s", &source]).await?;
    if percent > 0.0 {
        let probability = format!("{:.6}", percent / 100.0);
        let rule = [
            "-s",
            &source,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &probability,
            "-j",
            "DROP",
        ];
        add_rule(&switch, SWITCH_CHAIN, &rule).await?;
    }
    Ok(())
}

/// Everything `host` sends out of `eth0` is held for `delay ± jitter` (uniform, in order; see
/// [`delayer`]) by a delayer started from `program` (the loadtest binary: `current_exe()` in
/// the CLI) inside the host, recorded in `state` (`pids/netdelay-<netns>.pid`, log
/// `logs/netdelay-<netns>.log`). Replaces an earlier delay on the host.
pub async fn delay(
    net: &HostNetwork,
    host: &str,
    delay: Duration,
    jitter: Duration,
    state: &StateDir,
    program: &Path,
) -> Result<()> {
    ensure_tools().await?;
    let host = one_host(net, host)?;
    ensure_chain(&host.netns, CHAIN_OUT, "OUTPUT").await?;
    stop_delayer(state, host).await?;
    let ready = ready_file(state, host);
    process::remove_file_if_exists(&ready)?;
    let name = delayer_name(host);
    let log = state.log_file(&name);
    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
    let spec = DetachedSpec {
        program,
        args: vec![
            "net-delay".into(),
            "--queue".into(),
            DELAY_QUEUE.to_string(),
            "--delay-ms".into(),
            ms(delay),
            "--jitter-ms".into(),
            ms(jitter),
            "--ready-file".into(),
            ready.display().to_string(),
        ],
        env: Vec::new(),
        log: &log,
        cwd: None,
        user: None,
        netns: Some(&host.netns),
    };
    let pid = process::spawn_recorded(&spec, &state.pid_file(&name), 0)?;
    let deadline = Instant::now() + DELAYER_READY;
    while !ready.exists() {
        process::ensure_alive(pid, "network delayer", &log)?;
        if Instant::now() >= deadline {
            stop_delayer(state, host).await.ok();
            bail!(
                "the delayer in {} did not bind its queue within {DELAYER_READY:?}; see {}",
                host.name,
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queue = DELAY_QUEUE.to_string();
    let rule = [
        "-o",
        "eth0",
        "-j",
        "NFQUEUE",
        "--queue-num",
        &queue,
        "--queue-bypass",
    ];
    add_rule(&host.netns, CHAIN_OUT, &rule).await
}

/// Lifts every network fault in every host of `net` and its switch: flushes our chains, then
/// stops the delayers (which release what they hold). Safe to call when nothing was applied,
/// twice, and after the namespaces are gone (then only the delayers are stopped).
pub async fn heal(net: &HostNetwork, state: &StateDir) -> Result<()> {
    let mut errors = Vec::new();
    let iptables_present = iptables_binary().is_some();
    let mut netns_list: Vec<(&str, &str)> = net
        .hosts
        .iter()
        .flat_map(|h| [(h.netns.as_str(), CHAIN_IN), (h.netns.as_str(), CHAIN_OUT)])
        .collect();
    let switch = switch_netns(net).ok();
    if let Some(switch) = &switch {
        netns_list.push((switch, SWITCH_CHAIN));
    }
    for (ns, chain) in netns_list {
        if !iptables_present || !netns::netns_path(ns).exists() {
            continue;
        }
        if chain_exists(ns, chain).await {
            if let Err(e) = iptables(ns, &["-F", chain]).await {
                errors.push(format!("{e:#}"));
            }
        }
    }
    for host in &net.hosts {
        if let Err(e) = stop_delayer(state, host).await {
            errors.push(format!("{e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("healing the network: {}", errors.join("; "));
    }
    Ok(())
}

/// The rules of our chains now in force, one line per rule prefixed with the namespace (for
/// reports and tests).
pub async fn applied(net: &HostNetwork) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let mut chains: Vec<(String, &str)> = Vec::new();
    for h in &net.hosts {
        chains.push((h.netns.clone(), CHAIN_IN));
        chains.push((h.netns.clone(), CHAIN_OUT));
    }
    chains.push((switch_netns(net)?, SWITCH_CHAIN));
    for (ns, chain) in chains {
        if !chain_exists(&ns, chain).await {
            continue;
        }
        for line in iptables(&ns, &["-S", chain]).await?.lines() {
            if line.starts_with("-A ") {
                lines.push(format!("{ns}: {line}"));
            }
        }
    }
    Ok(lines)
}

/// The PID of the delayer running in `host`, if one does.
pub fn delayer_pid(state: &StateDir, host: &Host) -> Option<u32> {
    PidFile::read(&state.pid_file(&delayer_name(host)))
        .filter(PidFile::is_running)
        .map(|p| p.pid)
}

fn delayer_name(host: &Host) -> String {
    format!("netdelay-{}", host.netns)
}

fn ready_file(state: &StateDir, host: &Host) -> PathBuf {
    state
        .pids_dir()
        .join(format!("{}.ready", delayer_name(host)))
}

/// Stops `host`'s delayer by the PID in its pidfile (SIGTERM: it releases what it holds),
/// and removes the pidfile.
async fn stop_delayer(state: &StateDir, host: &Host) -> Result<()> {
    let pidfile = state.pid_file(&delayer_name(host));
    if let Some(PidFile {
        pid,
        binary: Some(binary),
        ..
    }) = PidFile::read(&pidfile)
    {
        process::terminate(pid, &binary, libc::SIGTERM, DELAYER_STOP).await?;
    }
    process::remove_file_if_exists(&pidfile)?;
    process::remove_file_if_exists(&ready_file(state, host))
}

fn hosts<'a>(net: &'a HostNetwork, names: &[&str]) -> Result<Vec<&'a Host>> {
    names.iter().map(|n| one_host(net, n)).collect()
}

fn one_host<'a>(net: &'a HostNetwork, name: &str) -> Result<&'a Host> {
    net.host(name)
        .with_context(|| format!("no host {name:?} in the network"))
}

/// The switch's namespace: `HostNetwork` names it `os<tag>-switch` and its hosts
/// `os<tag>-<name>`, so it is found from any host.
fn switch_netns(net: &HostNetwork) -> Result<String> {
    let host = net.hosts.first().context("the network has no hosts")?;
    let prefix = host
        .netns
        .strip_suffix(&format!("-{}", host.name))
        .with_context(|| format!("unexpected namespace name {}", host.netns))?;
    Ok(format!("{prefix}-switch"))
}

fn cidr(addr: Ipv4Addr) -> String {
    format!("{addr}/32")
}

/// `iptables -w <args>` inside `netns`; its standard output.
async fn iptables(netns: &str, args: &[&str]) -> Result<String> {
    let program = iptables_binary().context("`iptables` is not installed (see ensure_tools)")?;
    let program = program.to_string_lossy();
    let mut all = vec!["-w"];
    all.extend_from_slice(args);
    netns::exec_in(netns, &program, &all).await
}

async fn chain_exists(netns: &str, chain: &str) -> bool {
    iptables(netns, &["-S", chain]).await.is_ok()
}

/// Creates `chain` in `netns` (if missing) and jumps to it first thing from `hook`.
async fn ensure_chain(netns: &str, chain: &str, hook: &str) -> Result<()> {
    if !chain_exists(netns, chain).await {
        iptables(netns, &["-N", chain]).await?;
    }
    if iptables(netns, &["-C", hook, "-j", chain]).await.is_err() {
        iptables(netns, &["-I", hook, "1", "-j", chain]).await?;
    }
    Ok(())
}

/// Appends `rule` to `chain` unless the same rule is there already.
async fn add_rule(netns: &str, chain: &str, rule: &[&str]) -> Result<()> {
    let mut check = vec!["-C", chain];
    check.extend_from_slice(rule);
    if iptables(netns, &check).await.is_ok() {
        return Ok(());
    }
    let mut append = vec!["-A", chain];
    append.extend_from_slice(rule);
    iptables(netns, &append).await.map(drop)
}

/// Deletes every rule of `chain` whose specification starts with `prefix` (as `iptables -S`
/// prints it).
async fn delete_rules(netns: &str, chain: &str, prefix: &[&str]) -> Result<()> {
    let listing = iptables(netns, &["-S", chain]).await?;
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() < 2 || words[0] != "-A" || words[1] != chain {
            continue;
        }
        if words[2..].starts_with(prefix) {
            let mut delete = vec!["-D"];
            delete.extend_from_slice(&words[1..]);
            iptables(netns, &delete).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_is_found_from_the_hosts_names() {
        let net = HostNetwork::plan("nf", 9, &["nats-1", "order-service-1"]).unwrap();
        assert_eq!(switch_netns(&net).unwrap(), "osnf-switch");
        assert!(switch_netns(&HostNetwork::plan("nf", 9, &[]).unwrap()).is_err());
    }
}
