//! `lb backend-setup VIP`: the commands that prepare a backend of an ipip or gue VIP, from
//! the config: the VIP on loopback, rp_filter and arp_ignore, and decapsulation by the
//! kernel's tunnel devices (ipip, ip6tnl, fou) or by `lb decap attach`.

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{Result, bail};

use crate::config::{Config, ForwardingMode, VipConfig};

/// The commands for the backends of the VIP named `vip`, as a shell script to read and run.
pub fn commands(config: &Config, vip: &str) -> Result<String> {
    let Some(v) = config.vips.iter().find(|v| v.name == vip) else {
        bail!("no VIP named {vip:?} in the config");
    };
    if !v.mode.encapsulated() {
        bail!("VIP {vip} is in {} mode: backend-setup is for ipip and gue VIPs", v.mode.as_str());
    }
    let mut out = String::new();
    let (a, gue_port) = (v.address, config.balancer.gue_port);
    let _ = writeln!(
        out,
        "# Backends of VIP {vip} ({} mode, {}:{}/{}). On each backend, as root:",
        v.mode.as_str(),
        a,
        v.port,
        v.protocol
    );
    let _ = writeln!(out, "\n# The VIP on loopback, answered for only there:");
    match a {
        IpAddr::V4(_) => {
            let _ = writeln!(out, "ip addr add {a}/32 dev lo");
            let _ = writeln!(out, "sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2");
        }
        IpAddr::V6(_) => {
            let _ = writeln!(out, "ip -6 addr add {a}/128 dev lo");
        }
    }
    let _ = writeln!(out, "# The inner packets come from the clients, whose route is not the tunnel's:");
    let _ = writeln!(out, "sysctl -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0");
    let _ = writeln!(out, "\n# Then either the kernel's tunnel devices:");
    kernel_devices(&mut out, v, gue_port);
    let _ = writeln!(out, "\n# or lb's decap program, on the interface the encapsulated packets arrive on:");
    let _ = writeln!(out, "lb decap attach IFACE --gue-port {gue_port}");
    Ok(out)
}

/// The tunnel devices of each backend family the VIP has.
fn kernel_devices(out: &mut String, v: &VipConfig, gue_port: u16) {
    let of_family = |v4: bool| -> Vec<String> {
        v.backends.iter().filter(|b| b.address.is_ipv4() == v4).map(|b| b.address.to_string()).collect()
    };
    let (v4, v6) = (of_family(true), of_family(false));
    let gue = v.mode == ForwardingMode::Gue;
    if !v4.is_empty() {
        let _ = writeln!(out, "# IPv4 backends ({}):", v4.join(", "));
        let _ = writeln!(out, "modprobe ipip && ip link set tunl0 up && sysctl -w net.ipv4.conf.tunl0.rp_filter=0");
        if gue {
            let _ = writeln!(out, "modprobe fou && ip fou add port {gue_port} gue");
        }
    }
    for backend in &v6 {
        let _ =
            writeln!(out, "# IPv6 backend {backend} ({} in IPv6):", if v.address.is_ipv4() { "IPv4" } else { "IPv6" });
        let _ = writeln!(
            out,
            "modprobe ip6_tunnel && ip link add name lb-ip6tnl type ip6tnl mode any local {backend} && ip link set lb-ip6tnl up"
        );
        if gue {
            let _ = writeln!(out, "modprobe fou && ip fou add port {gue_port} gue -6");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[balancer]
interfaces = ["eth0"]
ipv4 = "10.0.0.1"
ipv6 = "fd00::1"
gue_port = 7000

[[vip]]
name = "web"
address = "10.100.0.1"
port = 80
mode = "gue"
[[vip.backend]]
address = "10.0.2.11"
[[vip.backend]]
address = "fd00:3::11"

[[vip]]
name = "plain"
address = "10.100.0.2"
port = 80
"#;

    #[test]
    fn gue_backends_of_both_families_get_their_devices_and_the_decap_program() {
        let config = crate::config::parse(CONFIG, "t.toml").unwrap();
        let out = commands(&config, "web").unwrap();
        for line in [
            "ip addr add 10.100.0.1/32 dev lo",
            "sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2",
            "sysctl -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
            "# IPv4 backends (10.0.2.11):",
            "modprobe fou && ip fou add port 7000 gue",
            "# IPv6 backend fd00:3::11 (IPv4 in IPv6):",
            "modprobe ip6_tunnel && ip link add name lb-ip6tnl type ip6tnl mode any local fd00:3::11 && ip link set lb-ip6tnl up",
            "modprobe fou && ip fou add port 7000 gue -6",
            "lb decap attach IFACE --gue-port 7000",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in:\n{out}");
        }
    }

    #[test]
    fn only_encapsulated_vips_have_a_setup() {
        let config = crate::config::parse(CONFIG, "t.toml").unwrap();
        let e = commands(&config, "plain").unwrap_err().to_string();
        assert!(e.contains("VIP plain is in nat mode: backend-setup is for ipip and gue VIPs"), "{e}");
        let e = commands(&config, "nope").unwrap_err().to_string();
        assert!(e.contains("no VIP named \"nope\""), "{e}");
    }
}
