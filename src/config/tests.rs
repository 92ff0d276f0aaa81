//! Unit tests of the configuration: defaults, file values and the flags that win over them,
//! every limit and its message, the settings handed to other layers, the value parsers.
//!
//! They merge with a fixed CPU count and host name, so they do not depend on the machine;
//! the integration tests run `check-config` and `serve` with real files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::parse_file;
use super::parse::is_dns_name;
use super::*;
use crate::relay::verify;
use crate::smtp::{BareLf, DEFAULT_MAX_ERRORS};
use crate::spool::SyncPolicy;

fn args() -> ServeArgs {
    ServeArgs {
        domain: vec!["Example.TEST".into()],
        ..ServeArgs::default()
    }
}

fn merge(args: &ServeArgs, toml: &str) -> Result<Config, ConfigError> {
    let file = parse_file(toml, Path::new("t.toml"))?;
    Config::merge(args, file, || 3, || "mx.local".into())
}

#[test]
fn defaults() {
    let c = merge(&args(), "").unwrap();
    assert_eq!(
        c.listen(),
        ["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(c.domains(), ["example.test"]);
    assert_eq!(c.spool_dir(), Path::new("spool"));
    assert_eq!(c.stats_path(), Path::new("spool/stats.sock"));
    assert_eq!(c.reactors(), 3);
    assert_eq!(c.hostname(), "mx.local");
    assert_eq!(c.sync(), SyncPolicy::Group);
    assert_eq!(c.max_message_size(), 35 * 1024 * 1024);
    assert_eq!(c.max_recipients(), 100);
    assert_eq!(c.max_connections(), DEFAULT_MAX_CONNECTIONS);
    assert_eq!(c.max_connections_per_ip(), None);
    assert_eq!(c.idle_timeout(), Duration::from_secs(300));
    assert_eq!(c.data_timeout(), Duration::from_secs(600));
    assert_eq!(
        c.session_config().data_timeout,
        Some(Duration::from_secs(600))
    );
}

#[test]
fn overlapping_listen_addresses_are_refused() {
    let e = |list: &[&str]| {
        let flags = ServeArgs {
            listen: list.iter().map(|a| a.parse().unwrap()).collect(),
            ..args()
        };
        merge(&flags, "").err().map(|e| e.to_string())
    };
    let msg = e(&["127.0.0.1:25", "0.0.0.0:25"]).unwrap();
    assert!(msg.contains("127.0.0.1:25 and 0.0.0.0:25 overlap"), "{msg}");
    assert!(e(&["[::]:25", "[::1]:25"]).is_some());
    // Different families (IPV6_V6ONLY), different ports and port 0 are fine.
    assert_eq!(e(&["0.0.0.0:25", "[::]:25"]), None);
    assert_eq!(e(&["0.0.0.0:25", "127.0.0.1:26"]), None);
    assert_eq!(e(&["0.0.0.0:0", "127.0.0.1:0"]), None);
}

#[test]
fn bare_lf_policy_defaults_to_reject() {
    let c = merge(&args(), "").unwrap();
    assert_eq!(c.bare_lf(), BareLf::Reject);
    assert_eq!(c.session_config().bare_lf, BareLf::Reject);
    let c = merge(&args(), "bare-lf = \"normalize\"").unwrap();
    assert_eq!(c.session_config().bare_lf, BareLf::Normalize);
    assert!(c.summary().contains("bare-lf=normalize"));
    let flags = ServeArgs {
        bare_lf: Some(BareLf::Reject),
        ..args()
    };
    assert_eq!(
        merge(&flags, "bare-lf = \"normalize\"").unwrap().bare_lf(),
        BareLf::Reject
    );
    let e = merge(&args(), "bare-lf = \"accept\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"reject\" or \"normalize\""), "{e}");
}

#[test]
fn recipient_verification_per_route_and_for_all_routes() {
    assert!(merge(&args(), "").unwrap().verify_config().is_none());
    let routes = r#"
        [routes]
        "a.test" = "smtp:[127.0.0.1]:25"
        "b.test" = { target = "lmtp:[127.0.0.1]:24", verify = true }
        "*" = { target = "smtp:[127.0.0.1]:26", verify = false }
    "#;
    let verifying = |c: &Config| -> Vec<String> {
        let v = c.verify_config().map(|v| v.routes).unwrap_or_default();
        let mut names: Vec<String> = v
            .all()
            .iter()
            .filter(|r| r.verify)
            .map(|r| r.name.clone())
            .collect();
        names.sort();
        names
    };
    let c = merge(&args(), routes).unwrap();
    assert_eq!(verifying(&c), ["b.test"]);
    let v = c.verify_config().unwrap();
    assert_eq!(
        (v.timeout, v.cache_accept, v.cache_refuse),
        (
            verify::DEFAULT_TIMEOUT,
            verify::DEFAULT_CACHE_ACCEPT,
            verify::DEFAULT_CACHE_REFUSE
        )
    );
    let all =
        format!("verify-recipients = true\nverify-timeout = 3\nverify-cache-refuse = 60\n{routes}");
    let c = merge(&args(), &all).unwrap();
    assert_eq!(verifying(&c), ["a.test", "b.test"], "verify = false wins");
    assert!(
        c.summary().ends_with(
            "verify-recipients=a.test,b.test(timeout=3s,cache-accept=3600s,cache-refuse=60s)"
        ),
        "{}",
        c.summary()
    );
    assert!(merge(&args(), "")
        .unwrap()
        .summary()
        .ends_with("verify-recipients=off"));
    let v = c.verify_config().unwrap();
    assert_eq!(v.timeout, Duration::from_secs(3));
    assert_eq!(v.cache_refuse, Duration::from_secs(60));
    // The flag turns it on for --relay-to routes too.
    let flags = ServeArgs {
        verify_recipients: true,
        verify_cache_accept: Some(10),
        relay_to: Some("lmtp:unix:/run/lmtp".into()),
        ..args()
    };
    let c = merge(&flags, "").unwrap();
    assert_eq!(verifying(&c).len(), 1);
    assert_eq!(
        c.verify_config().unwrap().cache_accept,
        Duration::from_secs(10)
    );
    let e = |toml: &str| merge(&args(), toml).unwrap_err().to_string();
    assert!(
        e("verify-recipients = true").contains("needs a route"),
        "{}",
        e("verify-recipients = true")
    );
    assert!(e(&format!("verify-timeout = 0\n{routes}")).contains("verify-timeout = 0 s"));
    assert!(e(&format!("verify-timeout = 61\n{routes}")).contains("between 1 and 60"));
    assert!(
        e(&format!("verify-cache-accept = 999999999\n{routes}")).contains("verify-cache-accept")
    );
}

#[test]
fn abuse_controls_from_file_and_flags_and_their_limits() {
    let c = merge(&args(), "").unwrap();
    assert_eq!(
        c.abuse(),
        &AbuseConfig {
            dnsbl_threshold: DEFAULT_DNSBL_THRESHOLD,
            ..AbuseConfig::default()
        }
    );
    let toml = r#"
        recipients = "/etc/ringmx/recipients"
        max-connect-rate = 60
        max-message-rate = 100
        max-recipient-rate = 500
        greet-pause = 6
        trusted-networks = ["10.0.0.0/8", "192.0.2.25", "2001:db8::/32"]
    "#;
    let c = merge(&args(), toml).unwrap();
    let a = c.abuse();
    assert_eq!(
        a.recipients.as_deref(),
        Some(Path::new("/etc/ringmx/recipients"))
    );
    assert_eq!(
        (a.max_connect_rate, a.max_message_rate, a.max_recipient_rate),
        (60, 100, 500)
    );
    assert_eq!(a.greet_pause, Duration::from_secs(6));
    assert_eq!(a.trusted_networks.len(), 3);
    assert!(c.summary().contains("max-connect-rate=60 max-message-rate=100 max-recipient-rate=500 greet-pause=6s trusted-networks=10.0.0.0/8,192.0.2.25/32,2001:db8::/32"), "{}", c.summary());
    let flags = ServeArgs {
        max_message_rate: Some(7),
        greet_pause: Some(0),
        trusted_networks: vec![parse_cidr("127.0.0.0/8").unwrap()],
        ..args()
    };
    let c = merge(&flags, toml).unwrap();
    assert_eq!(c.abuse().max_message_rate, 7);
    assert_eq!(c.abuse().max_connect_rate, 60);
    assert!(c.abuse().greet_pause.is_zero());
    assert_eq!(
        c.abuse().trusted_networks,
        [parse_cidr("127.0.0.0/8").unwrap()]
    );
    let e = |toml| merge(&args(), toml).unwrap_err().to_string();
    assert!(e("max-recipient-rate = 1000001").contains("above the limit of 1000000"));
    assert!(e("greet-pause = 61").contains("above the limit of 60 s"));
    assert!(e("trusted-networks = [\"10.0.0.0/33\"]").contains("trusted-networks"));
    assert!(e("max-connect-rate = -1").contains("config file"));
}

#[test]
fn data_timeout_from_file_and_flag_and_its_limits() {
    let c = merge(&args(), "data-timeout = 1200").unwrap();
    assert_eq!(c.data_timeout(), Duration::from_secs(1200));
    assert!(c.summary().contains("data-timeout=1200s"));
    let flags = ServeArgs {
        data_timeout: Some(5),
        ..args()
    };
    let c = merge(&flags, "data-timeout = 1200").unwrap();
    assert_eq!(
        c.session_config().data_timeout,
        Some(Duration::from_secs(5))
    );
    let e = |toml| merge(&args(), toml).unwrap_err().to_string();
    assert!(e("data-timeout = 0").contains("data-timeout must be at least 1"));
    assert!(e("data-timeout = 86401").contains("above the limit"));
}

#[test]
fn file_values_are_used_and_flags_win() {
    let toml = r#"
        listen = ["0.0.0.0:25", "[::]:25"]
        domain = ["a.test", "b.test"]
        spool = "/var/spool/ringmx"
        reactors = 2
        hostname = "mx.a.test"
        sync = "none"
        max-message-size = 1000
        max-recipients = 5
        max-connections = 50
        max-connections-per-ip = 5
        idle-timeout = 30
    "#;
    let c = merge(&ServeArgs::default(), toml).unwrap();
    assert_eq!(c.listen().len(), 2);
    assert!(c.listen()[1].is_ipv6());
    assert_eq!(c.domains(), ["a.test", "b.test"]);
    assert_eq!(c.stats_path(), Path::new("/var/spool/ringmx/stats.sock"));
    assert_eq!(c.reactors(), 2);
    assert_eq!(c.sync(), SyncPolicy::None);
    assert_eq!(c.max_message_size(), 1000);
    assert_eq!(c.max_connections_per_ip(), Some(5));
    assert_eq!(c.idle_timeout(), Duration::from_secs(30));

    let flags = ServeArgs {
        listen: vec!["127.0.0.1:2626".parse().unwrap()],
        domain: vec!["c.test".into()],
        stats: Some("/run/ringmx/stats.sock".into()),
        sync: Some(SyncPolicy::Group),
        max_message_size: Some(2000),
        idle_timeout: Some(2),
        ..ServeArgs::default()
    };
    let c = merge(&flags, toml).unwrap();
    assert_eq!(
        c.listen(),
        ["127.0.0.1:2626".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(c.domains(), ["c.test"]);
    assert_eq!(c.stats_path(), Path::new("/run/ringmx/stats.sock"));
    assert_eq!(c.sync(), SyncPolicy::Group);
    assert_eq!(c.max_message_size(), 2000);
    assert_eq!(c.max_recipients(), 5);
    assert_eq!(c.idle_timeout(), Duration::from_secs(2));
}

#[test]
fn dns_servers_and_mx_routes() {
    let c = merge(
        &args(),
        "dns-server = [\"127.0.0.1:5353\", \"192.0.2.53\", \"::1\"]\nrelay-to = \"mx:2525\"",
    )
    .unwrap();
    assert_eq!(
        c.dns_servers(),
        [
            "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
            "192.0.2.53:53".parse().unwrap(),
            "[::1]:53".parse().unwrap()
        ]
    );
    let d = c.delivery_config().unwrap();
    assert!(d.needs_resolver());
    assert_eq!(d.listen, c.listen());
    let e = merge(&args(), "dns-server = [\"ns.example\"]").unwrap_err();
    assert!(e.to_string().contains("IP:PORT"), "{e}");
    assert!(merge(&args(), "relay-to = \"mx:0\"").is_err());
}

#[test]
fn dnsbl_zones_and_threshold() {
    let c = merge(
        &args(),
        "dnsbl = [\"Bl.Test.\", \"zen.test*3\"]\ndnsbl-threshold = 2",
    )
    .unwrap();
    assert_eq!(
        c.abuse().dnsbl,
        [("bl.test".to_string(), 1), ("zen.test".to_string(), 3)]
    );
    assert_eq!(c.abuse().dnsbl_threshold, 2);
    let d = merge(&args(), "").unwrap();
    assert_eq!(d.abuse().dnsbl_threshold, DEFAULT_DNSBL_THRESHOLD);
    for bad in [
        "\"\"",
        "\"bl..test\"",
        "\"bl.test*0\"",
        "\"bl.test*x\"",
        "\"bl test\"",
        "\"*2\"",
    ] {
        let e = merge(&args(), &format!("dnsbl = [{bad}]")).unwrap_err();
        assert!(e.to_string().contains("dnsbl"), "{bad}: {e}");
    }
    assert!(merge(&args(), "dnsbl-threshold = 0").is_err());
}

#[test]
fn errors() {
    let e = |a: &ServeArgs, t: &str| merge(a, t).unwrap_err().to_string();
    assert!(e(&ServeArgs::default(), "").contains("--domain"));
    assert!(e(&args(), "listen = [\"localhost:25\"]").contains("not IP:port"));
    assert!(e(&args(), "listen = [\"1.2.3.4:25\", \"1.2.3.4:25\"]").contains("twice"));
    assert!(e(&args(), "max-mesage-size = 3").contains("unknown field"));
    assert!(e(&args(), "max-message-size = \"big\"").contains("t.toml"));
    assert!(e(&args(), "sync = \"always\"").contains("\"group\" or \"none\""));
    assert!(e(&args(), "reactors = 0").contains("between 1 and"));
    assert!(e(&args(), "max-recipients = 0").contains("max-recipients must be at least 1"));
    assert!(e(&args(), "idle-timeout = 0").contains("idle-timeout"));
    assert!(e(&args(), "idle-timeout = 99999").contains("above the limit"));
    assert!(e(&args(), "max-message-size = 99999999999").contains("above the limit"));
    assert!(e(&args(), "max-connections = 10\nmax-connections-per-ip = 11").contains("above"));
    assert!(e(&args(), "hostname = \"bad host\"").contains("hostname"));
    assert!(e(&args(), "retry-first = 8600000000").contains("between 1 and 31536000 s"));
    assert!(e(&args(), "max-queue-lifetime = 0").contains("at least 1"));
    let bad_domain = ServeArgs {
        domain: vec!["exa mple.test".into()],
        ..ServeArgs::default()
    };
    assert!(e(&bad_domain, "").contains("not a valid domain"));
    let long = ServeArgs {
        stats: Some(PathBuf::from("/".repeat(200))),
        ..args()
    };
    assert!(e(&long, "").contains("longer than"));
    // Every message is one line.
    assert!(!e(&args(), "max-message-size = [").contains('\n'));
}

#[test]
fn spool_path_that_is_a_file_is_refused() {
    let f = tempfile::NamedTempFile::new().unwrap();
    let a = ServeArgs {
        spool: Some(f.path().to_path_buf()),
        ..args()
    };
    assert!(matches!(merge(&a, ""), Err(ConfigError::SpoolNotDir(_))));
}

#[test]
fn read_error_names_the_file() {
    let a = ServeArgs {
        config: Some("/nonexistent/ringmx.toml".into()),
        ..args()
    };
    let msg = Config::load(&a).unwrap_err().to_string();
    assert!(msg.contains("/nonexistent/ringmx.toml"), "{msg}");
}

#[test]
fn derived_configs() {
    let c = merge(&args(), "max-recipients = 7\nsync = \"none\"").unwrap();
    let s = c.session_config();
    assert_eq!(s.local_domains, ["example.test"]);
    assert_eq!(s.max_recipients, 7);
    assert_eq!(s.max_errors, DEFAULT_MAX_ERRORS);
    let from_file = merge(&args(), "max-errors = 5").unwrap();
    assert_eq!(from_file.session_config().max_errors, 5);
    let mut a = args();
    a.max_errors = Some(0);
    let flag_wins = merge(&a, "max-errors = 5").unwrap();
    assert_eq!(flag_wins.session_config().max_errors, 0);
    let sp = c.spool_config(3);
    assert_eq!(sp.reactor, 3);
    assert_eq!(sp.sync, SyncPolicy::None);
    assert_eq!(sp.dir, Path::new("spool"));
    assert!(c.summary().contains("sync=none"));
}

#[test]
fn dns_names() {
    for ok in [
        "a",
        "example.test",
        "mx-1.example.test",
        "xn--bcher-kva.test",
    ] {
        assert!(is_dns_name(ok), "{ok}");
    }
    let long_label = "a".repeat(64);
    for bad in [
        "",
        "a..b",
        "-a.test",
        "a-.test",
        "a b",
        "a_b.test",
        long_label.as_str(),
    ] {
        assert!(!is_dns_name(bad), "{bad}");
    }
}
