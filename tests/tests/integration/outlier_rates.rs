//! Envoy's interval detectors end to end: `lb run` in the lab with an HTTP nat VIP over ten
//! backends, one answering 5xx at 30% and one at 2%. The packet path reports each
//! response's status class; at a sweep, success rate (by default) or failure percentage
//! (when enforced) ejects the backend at 30% and leaves the one at 2%. New requests flow
//! while the test waits for the ejection, and stop once it is logged, so the intervals
//! judged are those in which both faulty backends answered.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lb_tests::lab::{HTTP_PORT, Lab, LbProcess, VIP_V4, VipSpec, backends_across, http_request, lb_config};

/// Sweeps every 3 s; a backend is judged with 30 responses in an interval, and only when
/// all ten are: the interval that ejects r1-z1-b1 has judged r1-z1-b2 too.
const OUTLIER: &str = "interval = \"3s\", base_ejection_time = \"120s\", success_rate_request_volume = 30, \
                       failure_percentage_request_volume = 30, success_rate_minimum_hosts = 10, \
                       failure_percentage_minimum_hosts = 10";
const EJECTION_WAIT: Duration = Duration::from_secs(30);
const PACE: Duration = Duration::from_millis(3);

/// Responses by backend name: (all, 5xx).
type Answers = BTreeMap<String, (u64, u64)>;

/// Runs `lb` over ten backends where r1-z1-b1 answers 5xx at 30% and r1-z1-b2 at 2%, with
/// `outlier` keys in `outlier_detection`; sends requests until the first "backend ejected"
/// line; returns that line, the answers and the lb process.
fn run_until_ejection(tag: &str, outlier: &str) -> Result<(String, Answers, LbProcess, Lab)> {
    let lab = Lab::build(tag, backends_across(1, 1, 10), false)?;
    lab.backends[0].answer_5xx(30);
    lab.backends[1].answer_5xx(2);
    let vip = VipSpec::new("web", IpAddr::V4(VIP_V4), HTTP_PORT, "tcp", "nat", (0..10).map(|i| (i, 1)).collect());
    let keys = format!("http = true\noutlier_detection = {{ {OUTLIER}, {outlier} }}");
    let config = lb_config(&lab, &[vip]).balancer("region = \"r1\"\nzone = \"z1\"").vip("web", &keys);
    let mut lb = LbProcess::start(&lab, &config)?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        lab.client.spawn(move || -> Result<Answers> {
            let vip = SocketAddr::new(IpAddr::V4(VIP_V4), HTTP_PORT);
            let mut answers = Answers::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, name) = http_request(vip)?;
                let entry = answers.entry(name).or_default();
                *entry = (entry.0 + 1, entry.1 + u64::from(status >= 500));
                // About 170 requests a second: enough for the request volumes, and a pace
                // the nat port range sustains for minutes.
                std::thread::sleep(PACE);
            }
            Ok(answers)
        })?
    };
    let waited = lb.wait_for("backend ejected", EJECTION_WAIT);
    stop.store(true, Ordering::Relaxed);
    let answers = load.join().map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
    waited.with_context(|| format!("answers (all, 5xx) by backend: {answers:?}"))?;
    let line = lb.log().iter().find(|l| l.contains("backend ejected")).context("logged above")?.clone();
    Ok((line, answers, lb, lab))
}

/// The ejection was of r1-z1-b1 by `detector`, it is ejected in `lb status`, and no other
/// backend was ejected; the answers show the faults as set.
fn assert_only_the_30_percent_backend_ejected(
    lab: &Lab,
    lb: &mut LbProcess,
    line: &str,
    answers: &Answers,
    detector: &str,
) -> Result<()> {
    eprintln!("answers (all, 5xx) by backend: {answers:?}\nejection: {line}");
    let share = |name: &str| answers.get(name).map_or(0.0, |(all, bad)| 100.0 * *bad as f64 / *all as f64);
    ensure!((share("r1-z1-b1") - 30.0).abs() < 2.0, "r1-z1-b1 failed {}%", share("r1-z1-b1"));
    ensure!(share("r1-z1-b2") > 0.0 && share("r1-z1-b2") < 4.0, "r1-z1-b2 failed {}%", share("r1-z1-b2"));
    let b1 = SocketAddr::new(IpAddr::V4(lab.backends[0].v4), HTTP_PORT);
    ensure!(line.contains(&format!("backend={b1}")) && line.contains(&format!("reason={detector}")), "{line}");
    // Two more sweeps without load: nothing else is judged (too few requests).
    std::thread::sleep(Duration::from_secs(7));
    let ejections = lb.log().iter().filter(|l| l.contains("backend ejected") || l.contains("ejection refused")).count();
    ensure!(ejections == 1, "more than one ejection or refusal: {:#?}", lb.log());
    let status = lb.cli(&["status", "--vip", "web"])?;
    let state_of = |addr: SocketAddr| status.lines().find(|l| l.contains(&addr.to_string())).unwrap_or("").to_owned();
    let b2 = SocketAddr::new(IpAddr::V4(lab.backends[1].v4), HTTP_PORT);
    ensure!(state_of(b1).contains("ejected"), "r1-z1-b1 not shown ejected:\n{status}");
    ensure!(!state_of(b2).contains("ejected"), "r1-z1-b2 shown ejected:\n{status}");
    Ok(())
}

#[test]
fn success_rate_ejects_the_backend_at_30_percent_5xx_and_not_the_one_at_2() -> Result<()> {
    let (line, answers, mut lb, lab) = run_until_ejection("orsr", "max_ejection_percent = 20")?;
    assert_only_the_30_percent_backend_ejected(&lab, &mut lb, &line, &answers, "SuccessRate")
}

#[test]
fn failure_percentage_ejects_the_backend_at_30_percent_5xx_and_not_the_one_at_2() -> Result<()> {
    let keys = "max_ejection_percent = 20, enforcing_success_rate = 0, failure_percentage_threshold = 20, \
                enforcing_failure_percentage = 100";
    let (line, answers, mut lb, lab) = run_until_ejection("orfp", keys)?;
    assert_only_the_30_percent_backend_ejected(&lab, &mut lb, &line, &answers, "FailurePercentage")
}
