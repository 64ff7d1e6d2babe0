//! mDNS: a host's advertisement and a joiner's browse find each other.
//!
//! Both run in this process with their own mDNS daemons, limited to the
//! loopback interface and a test port, so real multicast packets cross
//! `lo` and nothing reaches the LAN. Loopback needs the MULTICAST flag,
//! which `test.sh` sets as root (`ip link set lo multicast on`); without it
//! the test is skipped, except in CI, where it fails.

use std::time::Duration;

use securechat::discovery::{Advertiser, Browser, Scope};

fn loopback_scope() -> Scope {
    let port = 5354 + (std::process::id() % 500) as u16;
    Scope {
        port,
        loopback_only: true,
    }
}

pub fn loopback_multicast() -> bool {
    // IFF_MULTICAST is 0x1000.
    std::fs::read_to_string("/sys/class/net/lo/flags")
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & 0x1000 != 0)
}

#[tokio::test]
async fn advertise_and_browse_find_each_other_and_goodbye_removes() {
    if !loopback_multicast() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the mDNS test: ./test.sh as root sets `ip link set lo multicast on`"
        );
        eprintln!(
            "SKIPPED the mDNS test: loopback has no MULTICAST flag (./test.sh as root sets it)"
        );
        return;
    }
    let scope = loopback_scope();
    let fingerprint = "AB:CD:EF:01:23:45:67:89";
    let advertiser = Advertiser::start(&scope, 48443, fingerprint).expect("advertise");
    let browser = Browser::start(&scope).expect("browse");
    let hosts = browser
        .wait_for(Duration::from_secs(20), |h| h.fingerprint == fingerprint)
        .await;
    let host = hosts
        .iter()
        .find(|h| h.fingerprint == fingerprint)
        .expect("the advertised host is found");
    assert_eq!(host.port, 48443);
    assert_eq!(host.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(host.id, advertiser.fullname());
    assert!(!host.addrs.is_empty());
    assert!(host.url().unwrap().starts_with("https://"));

    // Stopping the advertisement sends a goodbye: the browser forgets it.
    advertiser.stop().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while browser.hosts().iter().any(|h| h.fingerprint == fingerprint) {
        assert!(
            std::time::Instant::now() < deadline,
            "the host is still listed after it stopped advertising"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
