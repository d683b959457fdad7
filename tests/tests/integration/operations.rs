//! Operating the balancer end to end: the metrics against the traffic sent, the admin
//! interface and the `lb` commands that use it (status, drain, undrain, reload), and the
//! token when one is configured.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, Result, ensure};
use lb_tests::lab::{
    self, HTTP_PORT, LINE_PORT, Lab, LbProcess, LineConnection, UDP_PORT, VIP_V4, VipSpec, backends_across, http_get,
    lb_config, udp_request,
};
use lb_userspace::api::client::AdminClient;
use lb_userspace::api::status::Status;
use lb_userspace::config::AdminConfig;

/// The balancer config of nat VIPs (name, port, protocol) over every backend of the lab.
fn config(lab: &Lab, vips: &[(&str, u16, &'static str)]) -> String {
    let backends: Vec<(usize, u32)> = (0..lab.backends.len()).map(|i| (i, 1)).collect();
    let vips: Vec<VipSpec> = vips
        .iter()
        .map(|&(name, port, protocol)| VipSpec::new(name, IpAddr::V4(VIP_V4), port, protocol, "nat", backends.clone()))
        .collect();
    lb_config(lab, &vips).to_string()
}

/// `GET path` on the admin interface (default address) from the balancer's namespace.
fn admin_get(lab: &Lab, admin: AdminConfig, path: &'static str) -> Result<String> {
    lab.lb.run(move || AdminClient::new(&admin).call("GET", path))?
}

/// The samples of a metrics text: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

fn sample(samples: &BTreeMap<String, f64>, key: &str) -> Result<f64> {
    samples.get(key).copied().with_context(|| format!("no sample {key}"))
}

#[test]
fn metrics_count_the_traffic_sent() -> Result<()> {
    let lab = Lab::build("opmet", backends_across(1, 2, 2), false)?;
    let _lb = LbProcess::start(&lab, &config(&lab, &[("http", HTTP_PORT, "tcp"), ("udp", UDP_PORT, "udp")]))?;
    lab.client.run(|| -> Result<()> {
        for _ in 0..200 {
            http_get(SocketAddr::new(IpAddr::V4(VIP_V4), HTTP_PORT))?;
        }
        for _ in 0..100 {
            udp_request(SocketAddr::new(IpAddr::V4(VIP_V4), UDP_PORT))?;
        }
        Ok(())
    })??;
    let metrics = samples(&admin_get(&lab, AdminConfig::default(), "/metrics")?);
    assert_eq!(sample(&metrics, "lb_vip_new_flows_total{vip=\"http\"}")?, 200.0);
    assert_eq!(sample(&metrics, "lb_vip_packets_total{vip=\"udp\"}")?, 100.0);
    assert_eq!(sample(&metrics, "lb_vip_reply_packets_total{vip=\"udp\"}")?, 100.0);
    assert!(
        sample(&metrics, "lb_vip_packets_total{vip=\"http\"}")? >= 200.0 * 4.0,
        "a connection is at least 4 packets in"
    );
    assert_eq!(sample(&metrics, "lb_config_generation")?, 1.0);
    // Per backend: exactly what each backend's servers counted (connections for TCP;
    // datagrams for UDP, whose new sockets may reuse a source port, so an old flow).
    for (backend, served) in lab.backends.iter().zip(lab.served().into_values()) {
        for (metric, port, count) in [("new_flows", HTTP_PORT, served.http), ("packets", UDP_PORT, served.udp)] {
            let key = format!("lb_backend_{metric}_total{{backend=\"{}:{port}\"}}", backend.v4);
            assert_eq!(sample(&metrics, &key)?, count as f64, "{key}");
        }
        let state =
            format!("lb_backend_state{{vip=\"http\",backend=\"{}:{HTTP_PORT}\",state=\"available\"}}", backend.v4);
        assert_eq!(sample(&metrics, &state)?, 1.0, "{state}");
    }
    Ok(())
}

#[test]
fn drain_and_undrain_from_the_command_line() -> Result<()> {
    let lab = Lab::build("opdrain", backends_across(1, 1, 4), false)?;
    let lb = LbProcess::start(&lab, &config(&lab, &[("line", LINE_PORT, "tcp")]))?;
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), LINE_PORT);
    let drained = format!("{}:{LINE_PORT}", lab.backends[0].v4);
    let name = lab.backends[0].spec.name.clone();
    // Connections until one lands on the backend to drain.
    let mut on_drained = lab.client.run({
        let name = name.clone();
        move || -> Result<LineConnection> {
            for _ in 0..200 {
                let mut c = LineConnection::open(vip)?;
                if c.ask()? == name {
                    return Ok(c);
                }
            }
            anyhow::bail!("no connection reached {name}")
        }
    })??;

    let said = lb.cli(&["drain", "line", &drained])?;
    ensure!(said.contains("draining"), "{said}");
    let status: Status = serde_json::from_str(&lb.cli(&["status", "--json"])?)?;
    let backend = status.vips[0]
        .backends
        .iter()
        .find(|b| b.address.to_string() == drained)
        .context("drained backend in status")?;
    assert_eq!((backend.state.as_str(), backend.serving_weight), ("draining", 0));
    let answers =
        lab.client.run(move || (0..100).map(|_| LineConnection::open(vip)?.ask()).collect::<Result<Vec<_>>>())??;
    assert!(!answers.contains(&name), "a new connection went to the drained backend");
    assert_eq!(on_drained.ask()?, name, "the drained backend's open connection must stay");
    let table = lb.cli(&["status"])?;
    ensure!(table.contains("draining") && table.contains("VIP line"), "{table}");

    lb.cli(&["undrain", "line", &drained])?;
    let answers =
        lab.client.run(move || (0..100).map(|_| LineConnection::open(vip)?.ask()).collect::<Result<Vec<_>>>())??;
    assert!(answers.contains(&name), "undrained, yet no new connection went to it");
    let unknown = lb.cli(&["drain", "line", "10.9.9.9:7"]).unwrap_err().to_string();
    ensure!(unknown.contains("has no backend 10.9.9.9:7"), "{unknown}");
    Ok(())
}

#[test]
fn a_bad_reload_is_refused_with_its_line_and_traffic_goes_on() -> Result<()> {
    let lab = Lab::build("opreload", backends_across(1, 1, 2), false)?;
    let config = config(&lab, &[("http", HTTP_PORT, "tcp")]);
    let lb = LbProcess::start(&lab, &config)?;
    let vip = SocketAddr::new(IpAddr::V4(VIP_V4), HTTP_PORT);
    let bad = config.replacen("port = 80\n", "port = 0\n", 1);
    let line = bad.lines().position(|l| l == "port = 0").context("the bad line")? + 1;
    std::fs::write(lb.config_path(), &bad)?;
    let refused = lb.cli(&["reload"]).unwrap_err().to_string();
    ensure!(refused.contains(&format!(":{line}: vip[0].port:")), "{refused}");
    lab.client.run(move || http_get(vip))??;
    let status: Status = serde_json::from_str(&lb.cli(&["status", "--json"])?)?;
    let last = status.last_reload.context("a last reload")?;
    assert!(!last.applied && last.message.contains("vip[0].port"), "{last:?}");
    assert_eq!(status.generation, 1);

    std::fs::write(lb.config_path(), &config)?;
    ensure!(lb.cli(&["reload"])?.contains("generation 2"));
    let metrics = samples(&admin_get(&lab, AdminConfig::default(), "/metrics")?);
    assert_eq!(sample(&metrics, "lb_last_reload_applied")?, 1.0);
    assert_eq!(sample(&metrics, "lb_config_generation")?, 2.0);
    Ok(())
}

#[test]
fn a_configured_token_is_required() -> Result<()> {
    let lab = Lab::build("optoken", backends_across(1, 1, 1), false)?;
    let token = "0123456789abcdef0123";
    let config = format!("{}\n[admin]\ntoken = \"{token}\"\n", config(&lab, &[("http", HTTP_PORT, "tcp")]));
    let lb = LbProcess::start(&lab, &config)?;
    let without = admin_get(&lab, AdminConfig::default(), "/v1/status").unwrap_err().to_string();
    ensure!(without.contains("HTTP 401"), "{without}");
    let with = AdminConfig { token: Some(token.into()), ..AdminConfig::default() };
    ensure!(admin_get(&lab, with, "/metrics")?.contains("lb_build_info"));
    ensure!(lb.cli(&["status"])?.contains("VIP http"), "the CLI reads the token from the config");
    Ok(())
}

#[test]
fn a_killed_controller_is_replaced_without_losing_a_request_and_stop_detach_cleans_up() -> Result<()> {
    let lab = Lab::build("oprestart", backends_across(1, 2, 2), false)?;
    let config = config(&lab, &[("http", HTTP_PORT, "tcp"), ("line", LINE_PORT, "tcp")]);
    let first = LbProcess::start(&lab, &config)?;
    let programs = lab::xdp_programs(&lab.lb, "eth0")?;
    ensure!(programs.len() == 1, "one program attached at start: {programs:?}");
    let mut open = lab.client.run(|| -> Result<(LineConnection, String)> {
        let mut c = LineConnection::open(SocketAddr::new(IpAddr::V4(VIP_V4), LINE_PORT))?;
        let name = c.ask()?;
        Ok((c, name))
    })??;

    // Steady load: a new connection every 10 ms, through the crash and the restart.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let done = done.clone();
        lab.client.spawn(move || -> (u32, Vec<String>) {
            let (mut sent, mut failures) = (0, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                sent += 1;
                if let Err(e) = http_get(SocketAddr::new(IpAddr::V4(VIP_V4), HTTP_PORT)) {
                    failures.push(format!("{e:#}"));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            (sent, failures)
        })?
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    first.crash()?;
    let crashed = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut second = LbProcess::start(&lab, &config)?;
    eprintln!("controller away for {:?} (500 ms on purpose, then start to ready)", crashed.elapsed());
    std::thread::sleep(std::time::Duration::from_millis(500));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failures) = load.join().map_err(|_| anyhow::anyhow!("load thread panicked"))?;
    eprintln!("{sent} requests, {} failed", failures.len());
    assert!(failures.is_empty(), "{} of {sent} requests failed across the restart: {failures:?}", failures.len());
    assert!(sent >= 50, "only {sent} requests sent");
    assert!(
        second.log().iter().any(|l| l.contains("adopting the program")),
        "the new controller did not adopt: {:#?}",
        second.log()
    );
    assert_eq!(lab::xdp_programs(&lab.lb, "eth0")?, programs, "the same single program stays attached");
    assert_eq!(open.0.ask()?, open.1, "the open connection stays on its backend");

    // Still in charge: a reload through the new controller is applied.
    ensure!(second.cli(&["reload"])?.contains("generation 2"));
    second.cli(&["stop", "--detach"])?;
    assert!(lab::xdp_programs(&lab.lb, "eth0")?.is_empty(), "stop --detach leaves no program attached");
    assert!(!lab.pin_dir().exists(), "stop --detach removes the pins");
    Ok(())
}
