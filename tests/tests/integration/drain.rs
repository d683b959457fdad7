//! Drains that finish, end to end: `lb drain VIP ADDR:PORT --timeout` under a steady load of
//! new connections, while long-lived connections on the drained backend close one by one.
//! It waits while any is open, exits 0 once the last has closed, and no new connection
//! reaches the backend meanwhile; a drain that times out exits 1 and says how many are left.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use lb_tests::lab::{LINE_PORT, Lab, LbProcess, LineConnection, VIP_V4, VipSpec, backends_across, lb_config};

const VIP: SocketAddr = SocketAddr::new(IpAddr::V4(VIP_V4), LINE_PORT);
/// Long-lived connections held on each backend.
const HELD: usize = 3;
/// Longer than a flow sweep (1 s) and a status poll: what `lb drain` needs to see a change.
const SETTLE: Duration = Duration::from_millis(2500);

/// An `lb drain` run in the background; killed (it is our child) if the test ends first.
struct DrainRun(Option<Child>);

impl DrainRun {
    fn start(lb: &LbProcess, backend: SocketAddr, timeout: &str) -> Result<Self> {
        let args = ["drain", "lines", &backend.to_string(), "--timeout", timeout];
        let child = lb.cli_command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        Ok(Self(Some(child)))
    }

    fn is_running(&mut self) -> Result<bool> {
        Ok(self.0.as_mut().context("waited for already")?.try_wait()?.is_none())
    }

    /// Waits for it to end (at most `within`): its output.
    fn finish(&mut self, within: Duration) -> Result<Output> {
        let deadline = Instant::now() + within;
        while self.is_running()? {
            ensure!(Instant::now() < deadline, "lb drain still running after {within:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(self.0.take().context("waited for already")?.wait_with_output()?)
    }
}

impl Drop for DrainRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Opens line connections until each of the two backends holds [`HELD`]; extra ones close.
fn hold_on_each(lab: &Lab) -> Result<[Vec<LineConnection>; 2]> {
    let mut held: [Vec<LineConnection>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..100 {
        if held.iter().all(|h| h.len() >= HELD) {
            return Ok(held);
        }
        let (connection, name) = lab.client.run(|| -> Result<_> {
            let mut c = LineConnection::open(VIP)?;
            let name = c.ask()?;
            Ok((c, name))
        })??;
        let i = lab.backends.iter().position(|b| b.spec.name == name).context("an unknown backend answered")?;
        if held[i].len() < HELD {
            held[i].push(connection);
        }
    }
    anyhow::bail!("100 connections did not reach both backends {HELD} times each")
}

/// What the load saw: (when, who answered) per connection, and the failures.
type Load = (Vec<(Instant, String)>, u64);

/// New connections, one at a time, each asked once and closed, until `stop`.
fn steady_load(lab: &Lab, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<Load>> {
    lab.client.spawn(move || {
        let (mut answers, mut failures) = (Vec::new(), 0);
        while !stop.load(Ordering::Relaxed) {
            match LineConnection::open(VIP).and_then(|mut c| c.ask()) {
                Ok(name) => answers.push((Instant::now(), name)),
                Err(_) => failures += 1,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (answers, failures)
    })
}

fn open_flows(lb: &LbProcess, backend: SocketAddr) -> Result<u64> {
    let status: lb_userspace::api::status::Status = serde_json::from_str(&lb.cli(&["status", "--json"])?)?;
    Ok(lb_userspace::api::drain::open_flows(&status, "lines", backend)?)
}

#[test]
fn a_drain_under_load_ends_when_the_last_long_lived_connection_closes() -> Result<()> {
    let lab = Lab::build("drn", backends_across(1, 1, 2), false)?;
    let vip = VipSpec::new("lines", IpAddr::V4(VIP_V4), LINE_PORT, "tcp", "nat", vec![(0, 1), (1, 1)]);
    let lb = LbProcess::start(&lab, &lb_config(&lab, &[vip]))?;
    let [mut on_drained, mut on_other] = hold_on_each(&lab)?;
    let drained = SocketAddr::new(IpAddr::V4(lab.backends[0].v4), LINE_PORT);
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(&lab, stop.clone())?;

    std::thread::sleep(SETTLE);
    let mut drain = DrainRun::start(&lb, drained, "60s")?;
    let drain_started = Instant::now();
    std::thread::sleep(SETTLE);
    ensure!(open_flows(&lb, drained)? == HELD as u64, "lb status counts the held connections");
    while let Some(mut connection) = on_drained.pop() {
        ensure!(drain.is_running()?, "lb drain ended with {} connection(s) open", on_drained.len() + 1);
        connection.ask().context("a held connection still answers while its backend drains")?;
        drop(connection);
        std::thread::sleep(SETTLE);
    }
    let output = drain.finish(SETTLE)?;
    let said = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "lb drain failed: {said} {}", String::from_utf8_lossy(&output.stderr));
    ensure!(said.contains("drained: no open connection left"), "{said}");
    eprintln!("lb drain said: {said}");

    stop.store(true, Ordering::Relaxed);
    let (answers, failures) = load.join().map_err(|_| anyhow::anyhow!("the load thread panicked"))?;
    let name = &lab.backends[0].spec.name;
    let late = answers.iter().filter(|(at, who)| *at > drain_started + SETTLE && who == name).count();
    eprintln!("load: {} answered, {failures} failed, {late} by the drained backend after the drain", answers.len());
    ensure!(failures == 0 && late == 0, "{failures} failed, {late} new connections on the drained backend");
    ensure!(answers.len() > 200, "too little load: {}", answers.len());
    for connection in &mut on_other {
        connection.ask().context("the other backend's connections are untouched")?;
    }
    Ok(())
}

#[test]
fn a_drain_that_times_out_exits_1_with_the_connections_left() -> Result<()> {
    let lab = Lab::build("drt", backends_across(1, 1, 2), false)?;
    let vip = VipSpec::new("lines", IpAddr::V4(VIP_V4), LINE_PORT, "tcp", "nat", vec![(0, 1), (1, 1)]);
    let lb = LbProcess::start(&lab, &lb_config(&lab, &[vip]))?;
    let _held = hold_on_each(&lab)?;
    let backend = SocketAddr::new(IpAddr::V4(lab.backends[1].v4), LINE_PORT);
    std::thread::sleep(SETTLE);
    let output = DrainRun::start(&lb, backend, "2s")?.finish(Duration::from_secs(10))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(1), "exit {:?}: {stderr}", output.status);
    ensure!(stderr.contains(&format!("timed out after 2s: {HELD} open connection(s) left")), "{stderr}");
    let status = lb.cli(&["status", "--vip", "lines"])?;
    let row = status.lines().find(|l| l.contains(&backend.to_string())).unwrap_or_default();
    ensure!(row.contains("draining"), "the backend stays draining:\n{status}");
    Ok(())
}
