//! LAN discovery over mDNS/DNS-SD: a host advertises
//! `_securechat._tcp.local.` with TXT keys `version`, `host` (its computer
//! name) and `fp` (its CA certificate's SHA-256 fingerprint); joiners browse
//! and list what answers. The fingerprint in the TXT record is what a joiner
//! pins the host's certificate to (ARCHITECTURE.md, step 4).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

/// The DNS-SD service type.
pub const SERVICE_TYPE: &str = "_securechat._tcp.local.";
/// The standard mDNS port.
pub const MDNS_PORT: u16 = 5353;

/// What can go wrong starting discovery.
#[derive(Debug, thiserror::Error)]
#[error("LAN discovery (mDNS): {0}")]
pub struct DiscoveryError(String);

fn err(e: impl std::fmt::Display) -> DiscoveryError {
    DiscoveryError(e.to_string())
}

/// A host found on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundHost {
    /// The mDNS instance's full name (unique on the LAN).
    pub id: String,
    /// The computer's name, as the host advertises it.
    pub name: String,
    /// Its addresses, IPv4 first.
    pub addrs: Vec<IpAddr>,
    pub port: u16,
    /// The CA certificate's SHA-256 fingerprint.
    pub fingerprint: String,
    /// The host's SecureChat version.
    pub version: String,
}

impl FoundHost {
    /// `https://ADDRESS:PORT` of the host's first address.
    pub fn url(&self) -> Option<String> {
        let ip = self.addrs.first()?;
        Some(match ip {
            IpAddr::V4(v4) => format!("https://{v4}:{}", self.port),
            IpAddr::V6(v6) => format!("https://[{v6}]:{}", self.port),
        })
    }
}

/// Which interfaces and port discovery uses. The default is every
/// interface on the standard port. A host bound to loopback (and every
/// test) uses loopback only: nothing reaches the LAN.
#[derive(Debug, Clone)]
pub struct Scope {
    pub port: u16,
    pub loopback_only: bool,
}

impl Default for Scope {
    fn default() -> Self {
        Self {
            port: MDNS_PORT,
            loopback_only: false,
        }
    }
}

impl Scope {
    /// The scope of a host listening on `bind`: loopback only when it does.
    pub fn for_bind(bind: IpAddr) -> Self {
        Self {
            loopback_only: bind.is_loopback(),
            ..Self::default()
        }
    }
}

fn daemon(scope: &Scope) -> Result<ServiceDaemon, DiscoveryError> {
    let daemon = ServiceDaemon::new_with_port(scope.port).map_err(err)?;
    if scope.loopback_only {
        daemon.disable_interface(IfKind::All).map_err(err)?;
        daemon
            .enable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])
            .map_err(err)?;
    }
    Ok(daemon)
}

/// A host's advertisement; it stops when stopped or dropped.
pub struct Advertiser {
    daemon: ServiceDaemon,
    fullname: String,
    /// Set once the goodbye and shutdown are queued.
    stopped: bool,
}

impl Advertiser {
    /// Advertises a host listening on `port` whose CA has `fingerprint`.
    pub fn start(scope: &Scope, port: u16, fingerprint: &str) -> Result<Self, DiscoveryError> {
        let computer = crate::tls::computer_name();
        // Two hosts on one computer (or two computers with one name) must not
        // collide: the port and a few fingerprint digits keep names unique.
        let short: String = fingerprint.chars().filter(|c| *c != ':').take(8).collect();
        let instance = format!("SecureChat on {computer} ({port}-{short})");
        let host_name = format!("{}.local.", sanitize(&computer));
        let props = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("host", computer.as_str()),
            ("fp", fingerprint),
        ];
        let info = ServiceInfo::new(SERVICE_TYPE, &instance, &host_name, "", port, &props[..])
            .map_err(err)?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_owned();
        let daemon = daemon(scope)?;
        daemon.register(info).map_err(err)?;
        tracing::info!(instance = %instance, "advertising on the LAN (mDNS)");
        Ok(Self {
            daemon,
            fullname,
            stopped: false,
        })
    }

    /// The advertisement's full name (how browsers list it).
    pub fn fullname(&self) -> &str {
        &self.fullname
    }

    /// Withdraws the advertisement (a goodbye packet) and waits, without
    /// blocking a thread, up to a second each for the daemon to have sent it
    /// and to have stopped.
    pub async fn stop(mut self) {
        self.stopped = true;
        let wait = Duration::from_secs(1);
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = tokio::time::timeout(wait, done.recv_async()).await;
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(wait, done.recv_async()).await;
        }
    }
}

impl Drop for Advertiser {
    /// Dropped without [`Advertiser::stop`]: the goodbye and the shutdown
    /// are still queued (the daemon thread sends them in order), never
    /// waited for, so dropping never blocks.
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.daemon.unregister(&self.fullname);
            let _ = self.daemon.shutdown();
        }
    }
}

/// A DNS label from a computer name: letters, digits and hyphens.
fn sanitize(name: &str) -> String {
    let label: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    if label.trim_matches('-').is_empty() {
        "securechat-host".into()
    } else {
        label
    }
}

fn found(info: &mdns_sd::ResolvedService) -> Option<FoundHost> {
    let fingerprint = info.get_property_val_str("fp")?.to_owned();
    if fingerprint.is_empty() {
        return None;
    }
    let mut addrs: Vec<IpAddr> = info
        .get_addresses()
        .iter()
        .map(mdns_sd::ScopedIp::to_ip_addr)
        .filter(|ip| !ip.is_unspecified())
        .collect();
    // IPv4 first (link-local IPv6 needs a zone the URL cannot carry), then
    // a stable order.
    addrs.sort_by_key(|ip| (ip.is_ipv6(), *ip));
    addrs.retain(|ip| match ip {
        IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        IpAddr::V4(_) => true,
    });
    if addrs.is_empty() {
        return None;
    }
    Some(FoundHost {
        id: info.get_fullname().to_owned(),
        name: info
            .get_property_val_str("host")
            .unwrap_or(info.get_hostname())
            .to_owned(),
        addrs,
        port: info.get_port(),
        fingerprint,
        version: info
            .get_property_val_str("version")
            .unwrap_or("")
            .to_owned(),
    })
}

/// A running browse: the hosts that answer now, kept up to date in the
/// background until dropped.
pub struct Browser {
    daemon: ServiceDaemon,
    hosts: Arc<Mutex<BTreeMap<String, FoundHost>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Browser {
    pub fn start(scope: &Scope) -> Result<Self, DiscoveryError> {
        let daemon = daemon(scope)?;
        let events = daemon.browse(SERVICE_TYPE).map_err(err)?;
        let hosts = Arc::new(Mutex::new(BTreeMap::new()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let (map, notify) = (hosts.clone(), changed.clone());
        std::thread::Builder::new()
            .name("mdns-browse".into())
            .spawn(move || {
                while let Ok(event) = events.recv() {
                    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                    match event {
                        ServiceEvent::ServiceResolved(info) => {
                            if let Some(host) = found(&info) {
                                map.insert(host.id.clone(), host);
                            }
                        }
                        ServiceEvent::ServiceRemoved(_, fullname) => {
                            map.remove(&fullname);
                        }
                        ServiceEvent::SearchStopped(_) => break,
                        _ => continue,
                    }
                    drop(map);
                    notify.notify_waiters();
                }
            })
            .map_err(err)?;
        Ok(Self {
            daemon,
            hosts,
            changed,
        })
    }

    /// The hosts that answered and have not said goodbye.
    pub fn hosts(&self) -> Vec<FoundHost> {
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Waits up to `within` for a host that `accept` takes, returning every
    /// host found so far once one is (or when the time is up).
    pub async fn wait_for(
        &self,
        within: Duration,
        accept: impl Fn(&FoundHost) -> bool,
    ) -> Vec<FoundHost> {
        let deadline = Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            let hosts = self.hosts();
            if hosts.iter().any(&accept) {
                return hosts;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                return self.hosts();
            }
        }
    }
}

impl Drop for Browser {
    /// Stops browsing and the daemon without waiting for either.
    fn drop(&mut self) {
        let _ = self.daemon.stop_browse(SERVICE_TYPE);
        let _ = self.daemon.shutdown();
    }
}

/// The address the operating system would send from toward the default
/// route. A UDP "connect" only consults the routing table: nothing is sent.
pub fn default_route_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
}

/// This machine's LAN addresses for invite links: IPv4 and global IPv6, no
/// loopback or link-local; those on the default route's subnet first.
pub fn lan_addresses() -> Vec<IpAddr> {
    let ifaces = if_addrs::get_if_addrs().unwrap_or_default();
    let nets: Vec<(IpAddr, IpAddr)> = ifaces
        .iter()
        .map(|i| match &i.addr {
            if_addrs::IfAddr::V4(a) => (IpAddr::V4(a.ip), IpAddr::V4(a.netmask)),
            if_addrs::IfAddr::V6(a) => (IpAddr::V6(a.ip), IpAddr::V6(a.netmask)),
        })
        .collect();
    order_by_route(&nets, default_route_address())
}

/// The addresses of `nets` (address, netmask) worth sharing, those in the
/// same subnet as `route` first.
fn order_by_route(nets: &[(IpAddr, IpAddr)], route: Option<IpAddr>) -> Vec<IpAddr> {
    let same_subnet = |ip: IpAddr, mask: IpAddr| -> bool {
        match (ip, mask, route) {
            (IpAddr::V4(a), IpAddr::V4(m), Some(IpAddr::V4(r))) => {
                u32::from(a) & u32::from(m) == u32::from(r) & u32::from(m)
            }
            (IpAddr::V6(a), IpAddr::V6(m), Some(IpAddr::V6(r))) => {
                u128::from(a) & u128::from(m) == u128::from(r) & u128::from(m)
            }
            _ => false,
        }
    };
    let mut out: Vec<(bool, bool, IpAddr)> = nets
        .iter()
        .filter(|(ip, _)| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(v6) => {
                !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified()
            }
        })
        .map(|&(ip, mask)| (!same_subnet(ip, mask), ip.is_ipv6(), ip))
        .collect();
    out.sort();
    out.dedup();
    out.into_iter().map(|(_, _, ip)| ip).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_addresses_put_the_default_route_subnet_first() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        let nets = [
            (v4("127.0.0.1"), v4("255.0.0.0")),
            (v4("10.8.0.5"), v4("255.255.255.0")),
            (v4("192.168.1.20"), v4("255.255.255.0")),
            (v4("169.254.3.4"), v4("255.255.0.0")),
            (v4("fe80::1"), v4("ffff:ffff:ffff:ffff::")),
            (v4("fd00::20"), v4("ffff:ffff:ffff:ffff::")),
        ];
        assert_eq!(
            order_by_route(&nets, Some(v4("192.168.1.20"))),
            [v4("192.168.1.20"), v4("10.8.0.5"), v4("fd00::20")]
        );
        assert_eq!(
            order_by_route(&nets, None),
            [v4("10.8.0.5"), v4("192.168.1.20"), v4("fd00::20")]
        );
    }

    #[test]
    fn labels_are_dns_safe() {
        assert_eq!(sanitize("alice's PC"), "alice-s-PC");
        assert_eq!(sanitize("…"), "securechat-host");
    }

    #[test]
    fn urls_bracket_ipv6() {
        let mut host = FoundHost {
            id: "x".into(),
            name: "x".into(),
            addrs: vec!["fd00::1".parse().unwrap()],
            port: 8443,
            fingerprint: "AA".into(),
            version: "0".into(),
        };
        assert_eq!(host.url().as_deref(), Some("https://[fd00::1]:8443"));
        host.addrs = vec!["192.168.1.20".parse().unwrap()];
        assert_eq!(host.url().as_deref(), Some("https://192.168.1.20:8443"));
        host.addrs.clear();
        assert_eq!(host.url(), None);
    }
}
