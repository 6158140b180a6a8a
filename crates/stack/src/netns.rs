//! Hosts on one machine: each host is a Linux network namespace with one interface (`eth0`)
//! and its own address on a private /24, all joined by a bridge that lives in a namespace of
//! its own (the "switch"), so the machine's firewall and routes never see the traffic between
//! hosts. The CLI stays in the machine's namespace and reaches the hosts through one more
//! interface on the same bridge (the `.1` address): it is the operator's workstation.
//!
//! Everything is named after a short tag (`os<tag>-<host>` namespaces, `os<tag>…` links), made
//! with `ip` (iproute2) and removed by [`HostNetwork::destroy`] or, after a crash, by creating
//! the same network again (leftovers of the tag are removed first). Nothing is routed off the
//! machine: the subnet has no gateway beyond the bridge and forwarding is left as it is.
//! Processes are started inside a host with `DetachedSpec::netns` (entered with setns(2)).

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::process;

/// Where `ip netns add` puts a namespace's handle (the process starter opens it).
pub use super::process::netns_path;

/// One host of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The role it plays, e.g. "nats-1", "order-service-2".
    pub name: String,
    /// Its namespace (for `DetachedSpec::netns` and `ip netns exec`).
    pub netns: String,
    pub addr: Ipv4Addr,
}

/// The addresses and names of a network, before anything is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork {
    tag: String,
    /// The third octet of `10.213.<subnet>.0/24`.
    subnet: u8,
    pub hosts: Vec<Host>,
}

/// The longest tag: interface names are at most 15 bytes (`os` + tag + `g`/`b`/`v` + index).
const MAX_TAG: usize = 6;
/// Hosts get `.10`, `.11`, …; `.1` is the CLI's side.
const FIRST_HOST: u8 = 10;

impl HostNetwork {
    /// The network `tag` (letters and digits, up to 6) on `10.213.<subnet>.0/24` with one host
    /// per name, in order.
    pub fn plan(tag: &str, subnet: u8, names: &[&str]) -> Result<HostNetwork> {
        if tag.is_empty() || tag.len() > MAX_TAG || !tag.chars().all(|c| c.is_ascii_alphanumeric())
        {
            bail!("network tag {tag:?}: 1 to {MAX_TAG} letters or digits");
        }
        if names.len() > usize::from(u8::MAX - FIRST_HOST) {
            bail!("{} hosts do not fit one /24", names.len());
        }
        let mut hosts = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                bail!("host name {name:?}: letters, digits and '-'");
            }
            if hosts.iter().any(|h: &Host| h.name == *name) {
                bail!("host {name:?} twice");
            }
            hosts.push(Host {
                name: name.to_string(),
                netns: format!("os{tag}-{name}"),
                addr: Ipv4Addr::new(10, 213, subnet, FIRST_HOST + i as u8),
            });
        }
        Ok(HostNetwork {
            tag: tag.to_string(),
            subnet,
            hosts,
        })
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The CLI's own address on the network.
    pub fn workstation_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 1)
    }

    fn switch_netns(&self) -> String {
        format!("os{}-switch", self.tag)
    }

    fn bridge(&self) -> String {
        format!("os{}b", self.tag)
    }

    /// The workstation's link in the machine's namespace.
    fn workstation_link(&self) -> String {
        format!("os{}g", self.tag)
    }

    /// Host `i`'s link on the switch side.
    fn port_link(&self, i: usize) -> String {
        format!("os{}v{i}", self.tag)
    }

    /// Creates the switch, the hosts and the workstation link (removing leftovers of the same
    /// tag first). On failure everything made so far is removed again.
    pub async fn create(&self) -> Result<()> {
        ensure_iproute2().await?;
        self.destroy().await?;
        let result = self.build().await;
        if result.is_err() {
            self.destroy().await.ok();
        }
        result
    }

    async fn build(&self) -> Result<()> {
        let switch = self.switch_netns();
        let bridge = self.bridge();
        ip(&["netns", "add", &switch]).await?;
        in_netns(&switch, &["link", "set", "lo", "up"]).await?;
        in_netns(&switch, &["link", "add", &bridge, "type", "bridge"]).await?;
        in_netns(&switch, &["link", "set", &bridge, "up"]).await?;
        // The workstation: one end in our namespace with the .1 address, the other on the bridge.
        let workstation = self.workstation_link();
        let peer = format!("{workstation}p");
        ip(&[
            "link",
            "add",
            &workstation,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])
        .await?;
        ip(&["link", "set", &peer, "netns", &switch]).await?;
        in_netns(&switch, &["link", "set", &peer, "master", &bridge]).await?;
        in_netns(&switch, &["link", "set", &peer, "up"]).await?;
        let cidr = format!("{}/24", self.workstation_addr());
        ip(&["addr", "add", &cidr, "dev", &workstation]).await?;
        ip(&["link", "set", &workstation, "up"]).await?;
        for (i, host) in self.hosts.iter().enumerate() {
            let port = self.port_link(i);
            let inner = format!("{port}h");
            ip(&["netns", "add", &host.netns]).await?;
            in_netns(&host.netns, &["link", "set", "lo", "up"]).await?;
            ip(&["link", "add", &port, "type", "veth", "peer", "name", &inner]).await?;
            ip(&["link", "set", &port, "netns", &switch]).await?;
            in_netns(&switch, &["link", "set", &port, "master", &bridge]).await?;
            in_netns(&switch, &["link", "set", &port, "up"]).await?;
            ip(&["link", "set", &inner, "netns", &host.netns]).await?;
            in_netns(&host.netns, &["link", "set", &inner, "name", "eth0"]).await?;
            let cidr = format!("{}/24", host.addr);
            in_netns(&host.netns, &["addr", "add", &cidr, "dev", "eth0"]).await?;
            in_netns(&host.netns, &["link", "set", "eth0", "up"]).await?;
        }
        Ok(())
    }

    /// Removes the hosts, the switch and the workstation link of this tag, whatever exists of
    /// them. The processes inside must have been stopped first (a namespace whose name is gone
    /// lives on while a process runs in it, unreachable).
    pub async fn destroy(&self) -> Result<()> {
        let prefix = format!("os{}-", self.tag);
        let mut errors = Vec::new();
        for name in existing_netns().await? {
            if name.starts_with(&prefix) {
                if let Err(e) = ip(&["netns", "del", &name]).await {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        // Deleting the switch deletes the peer; the workstation end may remain if it was never moved.
        let link = self.workstation_link();
        if link_exists(&link).await {
            if let Err(e) = ip(&["link", "del", &link]).await {
                errors.push(format!("{e:#}"));
            }
        }
        if !errors.is_empty() {
            bail!("removing network {}: {}", self.tag, errors.join("; "));
        }
        Ok(())
    }
}

/// The names of the machine's network namespaces.
async fn existing_netns() -> Result<Vec<String>> {
    let out = run_ip(&["netns", "list"]).await?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

async fn link_exists(name: &str) -> bool {
    run_ip(&["link", "show", "dev", name])
        .await
        .is_ok_and(|out| out.status.success())
}

/// Installs iproute2 when `ip` is missing (a minimal Debian has it; containers often do not).
async fn ensure_iproute2() -> Result<()> {
    if ip_binary().is_none() {
        process::apt_install(&["iproute2"]).await?;
    }
    if ip_binary().is_none() {
        bail!("`ip` (iproute2) is not installed and could not be installed");
    }
    if !nix_is_root() {
        bail!("the hosts topology creates network namespaces: run as root");
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn ip_binary() -> Option<PathBuf> {
    process::which("ip").or_else(|| {
        ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| process::is_executable(p))
    })
}

async fn run_ip(args: &[&str]) -> Result<std::process::Output> {
    let ip = ip_binary().context("`ip` (iproute2) is not installed")?;
    process::run(&ip, args, &[], None, None).await
}

/// `ip <args>`, an error with its output unless it succeeds.
pub async fn ip(args: &[&str]) -> Result<()> {
    let out = run_ip(args).await?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            process::combined_output(&out).trim()
        );
    }
    Ok(())
}

/// `ip -n <netns> <args>`: an `ip` command inside a namespace.
pub async fn in_netns(netns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    ip(&all).await
}

/// Runs `program args` inside `netns` (`ip netns exec`), an error with its output unless it
/// succeeds; for the firewall and traffic-control commands of network faults.
pub async fn exec_in(netns: &str, program: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["netns", "exec", netns, program];
    all.extend_from_slice(args);
    let out = run_ip(&all).await?;
    if !out.status.success() {
        bail!(
            "{program} {} in {netns} failed: {}",
            args.join(" "),
            process::combined_output(&out).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_get_consecutive_addresses_and_short_names() {
        let net = HostNetwork::plan("t1", 7, &["nats-1", "nats-2", "order-service-1"]).unwrap();
        assert_eq!(net.workstation_addr(), Ipv4Addr::new(10, 213, 7, 1));
        let addrs: Vec<_> = net.hosts.iter().map(|h| h.addr.to_string()).collect();
        assert_eq!(addrs, ["10.213.7.10", "10.213.7.11", "10.213.7.12"]);
        assert_eq!(net.host("nats-2").unwrap().netns, "ost1-nats-2");
        // Link names stay within the kernel's 15 bytes even with the longest tag.
        let long = HostNetwork::plan("abcdef", 1, &["a"]).unwrap();
        for link in [
            long.bridge(),
            long.workstation_link() + "p",
            long.port_link(244) + "h",
        ] {
            assert!(link.len() <= 15, "{link}");
        }
    }

    #[test]
    fn bad_plans_are_refused() {
        assert!(HostNetwork::plan("", 1, &["a"]).is_err());
        assert!(HostNetwork::plan("toolong", 1, &["a"]).is_err());
        assert!(HostNetwork::plan("t", 1, &["a", "a"]).is_err());
        assert!(HostNetwork::plan("t", 1, &["a b"]).is_err());
    }
}
