//! A fleet of three balancer hosts behind an ECMP router, announcing the same dsr VIP by
//! BGP through BIRD 2 (tests/src/fleet): the router's FIB follows each host's ability to
//! serve, BFD removes a silent host, a drained and stopped host loses no request and the
//! long-lived connections that move keep their backend, a controller restart keeps the
//! routes, and BIRD going away is shown and recovered from. Also the shipped fleet configs.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use lb_tests::fleet::*;
use lb_tests::lab::{LbProcess, LineConnection, http_get};
use lb_userspace::api::flows::FlowList;
use lb_userspace::api::status::Status;

/// Bound of waits for the router to follow a change (generous: the targets are printed).
const ROUTES_FOLLOW: Duration = Duration::from_secs(10);

fn status(lb: &LbProcess) -> Result<Status> {
    serde_json::from_str(&lb.cli(&["status", "--json"])?).context("decoding lb status --json")
}

/// New flows of VIP `web` that host `i` has taken.
fn web_flows(fleet: &Fleet, i: usize) -> Result<u64> {
    let s = status(fleet.lb(i))?;
    Ok(s.vips.iter().find(|v| v.name == "web").context("no VIP web")?.counters.new_flows)
}

/// `n` HTTP requests from the far client, each on a new connection: the failures.
fn requests(fleet: &Fleet, n: usize) -> Result<usize> {
    fleet.far_client.run(move || (0..n).filter(|_| http_get(WEB).is_err()).count())
}

/// Waits until `check` holds, at most `within`.
fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    while !check()? {
        ensure!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(start.elapsed())
}

#[test]
fn the_shipped_bird_config_reads_lbs_include_file_and_the_example_parses() -> Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/fleet.toml");
    let config = lb_userspace::config::load(std::path::Path::new(path))?;
    let bgp = config.bgp.as_ref().context("fleet.toml has [bgp]")?;
    assert_eq!(bgp.include_file.to_str(), Some(SHIPPED_INCLUDE), "fleet.toml and bird-fleet.conf agree");
    let vips = config.vips.iter().map(|v| (v.address, true));
    let routes = lb_userspace::bgp::policy::announcements(bgp, vips, Default::default());
    let router_id = bgp.router_id(config.balancer.ipv4).context("a router id")?;
    let include = lb_userspace::bgp::bird_conf::render(bgp, router_id, false, &routes);
    let dir = tempfile::tempdir()?;
    let include_path = dir.path().join("bird-lb.conf");
    std::fs::write(&include_path, &include)?;
    let conf = dir.path().join("bird-fleet.conf");
    std::fs::write(&conf, BIRD_FLEET_CONF.replace(SHIPPED_INCLUDE, &include_path.display().to_string()))?;
    check_config(&conf).with_context(|| format!("the include file:\n{include}"))?;
    // A drained host's file (MED, communities) is BIRD's too.
    let drained = lb_userspace::bgp::policy::announcements(
        bgp,
        [(config.vips[0].address, true)],
        lb_userspace::bgp::policy::HostState::Drained,
    );
    std::fs::write(&include_path, lb_userspace::bgp::bird_conf::render(bgp, router_id, true, &drained))?;
    check_config(&conf)
}

#[test]
fn ecmp_follows_each_hosts_backends_and_spreads_connections() -> Result<()> {
    let fleet = Fleet::build("flecmp", "action = \"med\"", BFD_RELAXED)?;
    assert_eq!(fleet.nexthops()?.len(), 3, "one nexthop per host");
    assert_eq!(requests(&fleet, 90)?, 0, "requests over three hosts");
    let spread: Vec<u64> = (0..HOSTS).map(|i| web_flows(&fleet, i)).collect::<Result<_>>()?;
    println!("ECMP spread of 90 new connections over 3 hosts: {spread:?}");
    assert!(spread.iter().all(|&n| n > 0), "every host takes connections: {spread:?}");

    // Host 1 can't reach its backends: its VIP can't take new flows, its route goes.
    fleet.cut_backends(1, true)?;
    let gone = fleet.wait_nexthops(2, ROUTES_FOLLOW)?;
    ensure!(!fleet.nexthops()?.contains(&fleet.hosts[1].address), "host 1's route was withdrawn");
    println!("backends cut: route withdrawn in {} ms (checks 200 ms x 2 + 1 s = 1400 ms)", gone.as_millis());
    assert_eq!(requests(&fleet, 30)?, 0, "requests over the two hosts left");
    let s = status(fleet.lb(1))?;
    let bgp = s.bgp.context("host 1 shows its BGP state")?;
    assert!(bgp.announced.is_empty() && bgp.in_sync, "{bgp:?}");
    fleet.cut_backends(1, false)?;
    let back = fleet.wait_nexthops(3, ROUTES_FOLLOW)?;
    println!("healed: route back in {} ms", back.as_millis());
    Ok(())
}

#[test]
fn bfd_removes_a_silent_host() -> Result<()> {
    let fleet = Fleet::build("flbfd", "action = \"med\"", BFD)?;
    let silent = fleet.hosts[2].address;
    fleet.silence(2)?;
    let took = fleet.wait_nexthops(2, ROUTES_FOLLOW)?;
    ensure!(!fleet.nexthops()?.contains(&silent), "the silent host's route is gone");
    println!("silent host (link up): BFD ({} ms x {}) removed its route in {} ms", BFD.0, BFD.1, took.as_millis());
    assert_eq!(requests(&fleet, 30)?, 0, "requests over the two hosts left");
    Ok(())
}

/// Long-lived line connections from the far client: each with the backend it reached.
fn hold_connections(fleet: &Fleet, n: usize) -> Result<Vec<(LineConnection, String)>> {
    fleet.far_client.run(move || -> Result<Vec<(LineConnection, String)>> {
        (0..n)
            .map(|_| {
                let mut c = LineConnection::open(LINES)?;
                let name = c.ask()?;
                Ok((c, name))
            })
            .collect()
    })?
}

/// The clients of host `i`'s flows of VIP `lines`.
fn clients_on(fleet: &Fleet, i: usize) -> Result<BTreeSet<SocketAddr>> {
    let list: FlowList = serde_json::from_str(&fleet.cli(i, &["flows", "--vip", "lines", "--json"])?)?;
    Ok(list.flows.iter().map(|f| f.client).collect())
}

/// New connections, one HTTP request each, every 10 ms until `stop`: (answered, failed).
fn steady_load(fleet: &Fleet, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<(u64, u64)>> {
    fleet.far_client.spawn(move || {
        let (mut ok, mut failed) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            match http_get(WEB) {
                Ok(_) => ok += 1,
                Err(_) => failed += 1,
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (ok, failed)
    })
}

#[test]
fn a_drained_then_stopped_host_loses_no_request_and_moved_dsr_connections_keep_their_backend() -> Result<()> {
    let mut fleet = Fleet::build("fldrn", "action = \"med\"", BFD_RELAXED)?;
    let held = hold_connections(&fleet, 30)?;
    // The flow sweep (every second) counts them in the status; the flow table has them now.
    let moving = clients_on(&fleet, 1)?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&fleet, stop.clone())?;
    std::thread::sleep(Duration::from_millis(500));

    let said = fleet.cli(1, &["host", "drain"])?;
    assert!(said.starts_with("host drained: 1 routes announced, less preferred (med)"), "{said}");
    let moved_in = fleet.wait_nexthops(2, ROUTES_FOLLOW)?;
    ensure!(!fleet.nexthops()?.contains(&fleet.hosts[1].address), "the drained host is no nexthop");
    let started = Instant::now();
    let stopped = fleet.cli(1, &["stop", "--detach"])?;
    let stop_took = started.elapsed();
    assert!(stopped.contains("detached"), "{stopped}");
    fleet.hosts[1].lb.take();
    let include = std::fs::read_to_string(&fleet.hosts[1].include_file)?;
    assert!(!include.contains("route ") && include.contains("lb-host-state: drained"), "{include}");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (answered, failed) = load.join().map_err(|_| anyhow::anyhow!("the load panicked"))?;

    let moving_ports: BTreeSet<SocketAddr> = moving;
    let (mut moved, mut broken) = (0, 0);
    let results = fleet.far_client.run(move || {
        held.into_iter()
            .map(|(mut c, name)| {
                let was_on_host_1 = c.local_addr().is_ok_and(|a| moving_ports.contains(&a));
                (was_on_host_1, c.ask().ok() == Some(name))
            })
            .collect::<Vec<_>>()
    })?;
    for (was_on_host_1, kept) in results {
        moved += was_on_host_1 as usize;
        broken += (!kept) as usize;
    }
    println!(
        "drain then stop --detach under load: traffic moved in {} ms, stop took {} ms; {answered} requests, {failed} failed; \
         {moved} of 30 long-lived dsr connections moved host, {broken} broken",
        moved_in.as_millis(),
        stop_took.as_millis()
    );
    assert_eq!(failed, 0, "no request fails while a host is drained and stopped");
    assert!(answered > 50, "the load ran ({answered} requests)");
    assert!(moved > 0, "some long-lived connections went through host 1");
    assert_eq!(broken, 0, "connections that moved host keep their backend");
    Ok(())
}

#[test]
fn a_controller_restart_keeps_the_routes_and_bird_going_away_is_shown_and_recovered() -> Result<()> {
    let mut fleet = Fleet::build("flrst", "action = \"withdraw\"", BFD_RELAXED)?;
    // The controller dies: BIRD keeps the routes, the next controller adopts them.
    let config = std::fs::read_to_string(fleet.lb(0).config_path())?;
    let watch = fleet.watch_nexthops();
    fleet.hosts[0].lb.take().context("host 0's lb")?.crash()?;
    let pin_dir = fleet.lab.pin_dir();
    let restarted = LbProcess::start_in(fleet.host_ns(0), &format!("{}-h0", fleet.lab.prefix), pin_dir, &config)?;
    fleet.hosts[0].lb = Some(restarted);
    wait_until(ROUTES_FOLLOW, "the new controller in sync with BIRD", || {
        Ok(status(fleet.lb(0))?.bgp.is_some_and(|b| b.in_sync && b.configured > 0))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(watch.fewest()?, 3, "a controller restart withdrew no route, not even for a moment");

    // A drain by withdrawal, adopted by the next controller too.
    let said = fleet.cli(0, &["host", "drain"])?;
    assert!(said.starts_with("host drained: no route announced"), "{said}");
    fleet.wait_nexthops(2, ROUTES_FOLLOW)?;
    fleet.cli(0, &["host", "undrain"])?;
    fleet.wait_nexthops(3, ROUTES_FOLLOW)?;

    // Host 2's BIRD goes away: lb says so and retries; forwarding goes on.
    fleet.hosts[2].bird.take();
    wait_until(ROUTES_FOLLOW, "lb status shows BIRD away", || {
        Ok(status(fleet.lb(2))?.bgp.is_some_and(|b| !b.bird_up && b.last_error.is_some()))
    })?;
    let text = fleet.cli(2, &["status"])?;
    assert!(text.contains("BGP: host serving") && text.contains("cannot reach BIRD"), "{text}");
    let metrics = fleet.host_ns(2).output(&["curl", "-s", "http://127.0.0.1:9180/metrics"])?;
    assert!(metrics.contains("lb_bgp_bird_up 0"), "{metrics}");
    fleet.wait_nexthops(2, ROUTES_FOLLOW)?;
    assert_eq!(requests(&fleet, 20)?, 0, "requests while a host's BIRD is away");
    // BIRD, started again, reads what lb wrote; lb finds it and is in sync again.
    let conf = std::fs::read_to_string(fleet.dir.path().join("h2.conf"))?;
    fleet.hosts[2].bird = Some(Bird::start(fleet.host_ns(2), fleet.dir.path(), "h2", &conf)?);
    fleet.wait_nexthops(3, ROUTES_FOLLOW)?;
    wait_until(ROUTES_FOLLOW, "lb in sync with the new BIRD", || {
        Ok(status(fleet.lb(2))?.bgp.is_some_and(|b| b.bird_up && b.in_sync && b.last_error.is_none()))
    })?;
    Ok(())
}

#[test]
fn the_bird_unit_passes_systemd_analyze_and_names_lbs_paths() -> Result<()> {
    let unit = include_str!("../../../config/bird-lb.service");
    // lb's defaults (`bgp.include_file`, `bgp.bird_socket`), and where the README installs
    // the shipped BIRD config.
    let bgp: lb_userspace::config::bgp::BgpConfig =
        toml::from_str("asn = 1\n[[peer]]\naddress = \"10.0.0.254\"\nasn = 2")?;
    for path in [bgp.include_file.display().to_string(), bgp.bird_socket.display().to_string()] {
        assert!(unit.contains(&path), "bird-lb.service does not name {path}");
    }
    assert_eq!(bgp.include_file.to_str(), Some(SHIPPED_INCLUDE));
    assert!(unit.contains("-c /etc/bird/bird-fleet.conf") && unit.contains("After=network-online.target lb.service"));
    assert!(!unit.lines().any(|l| l.starts_with("Requires=")), "a restart of lb must not restart BIRD");
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("bird-lb.service"), unit)?;
    std::fs::write(dir.path().join("lb.service"), include_str!("../../../config/lb.service"))?;
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("bird-lb.service"))
        .current_dir(dir.path())
        .output()
        .context("running systemd-analyze (apt install systemd)")?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    Ok(())
}
