//! A balancer configured so that every labelled series `lb` exposes exists: a nat VIP
//! with HTTP, outlier detection and a source limit, a dsr VIP with flow and packet limits,
//! and `[dns]` answering [`DNS_NAME`]. The deploy/ tests check the rules' and dashboard's
//! metric names against it; `lb-panels` draws the dashboard over it.

use std::net::{IpAddr, Ipv4Addr};

use crate::lab::{HTTP_PORT, LB_V4, Lab, LabConfig, VIP_V4, VipSpec, backends_across, lb_config};

/// The nat VIP; the dsr one is [`VIP_V4`], both on port [`HTTP_PORT`].
pub const NAT_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
pub const DNS_NAME: &str = "www.example.test";

/// The lab it runs on: 2 backends in one zone, holding the dsr VIP (`tag` starts its names).
pub fn build_lab(tag: &str) -> anyhow::Result<Lab> {
    Lab::build(tag, backends_across(1, 1, 2), true)
}

/// The config: both VIPs over both backends of a lab from [`build_lab`].
pub fn every_series_config(lab: &Lab) -> LabConfig {
    let both = vec![(0, 1), (1, 1)];
    let vips = [
        VipSpec::new("web-nat", IpAddr::V4(NAT_VIP), HTTP_PORT, "tcp", "nat", both.clone()),
        VipSpec::new("web-dsr", IpAddr::V4(VIP_V4), HTTP_PORT, "tcp", "dsr", both),
    ];
    lb_config(lab, &vips)
        .vip("web-nat", "http = true\noutlier_detection = {}\nsource_limit = { quota = 100 }")
        .vip("web-dsr", "new_flow_limit = { quota = 1000 }\npacket_limit = { quota = 100000 }")
        .merge(&dns_section())
}

/// `[dns]` answering [`DNS_NAME`] with the nat VIP while it has a backend, else with
/// the dsr VIP.
fn dns_section() -> String {
    format!(
        "[dns]\nlisten = [\"{LB_V4}:53\"]\nvantage = \"here\"\n\n\
         [[dns.target]]\nname = \"site-a\"\naddress = \"{NAT_VIP}\"\nvip = \"web-nat\"\n\n\
         [[dns.target]]\nname = \"site-b\"\naddress = \"{VIP_V4}\"\nvip = \"web-dsr\"\n\n\
         [[dns.zone]]\norigin = \"example.test.\"\nns = [\"ns1.example.test.\"]\n\n\
         [[dns.zone.record]]\nname = \"ns1\"\ntype = \"A\"\ndata = \"{LB_V4}\"\n\n\
         [[dns.zone.policy]]\nname = \"www\"\ntype = \"A\"\nttl = 1\nprimary = [\"site-a\"]\nbackup = [[\"site-b\"]]\n"
    )
}
