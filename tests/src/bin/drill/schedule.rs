//! The drill's schedule: the VIP's health settings, the sites' timing, the faults by phase
//! and how long each phase lasts.

use std::time::Duration;

use lb_tests::sites::Timing;

/// The VIP's health settings: what the targets below assume.
pub const HEALTH: &str = r#"http = true
health_check = { type = "http", interval = "1s", timeout = "500ms", unhealthy_threshold = 2, healthy_threshold = 2 }
outlier_detection = { split_external_local_origin_errors = true, consecutive_local_origin_failures = 1, consecutive_5xx = 3, interval = "1s", base_ejection_time = "10s", max_ejection_percent = 100 }"#;
/// Active detection window of a black-holed backend: interval x unhealthy_threshold.
pub const DETECTION_WINDOW: Duration = Duration::from_secs(2);
/// How the sites judge each other: at the pace of [`HEALTH`]'s checks, and the record's
/// short TTL.
pub const TIMING: Timing =
    Timing { interval: Duration::from_secs(1), unhealthy_threshold: 2, healthy_threshold: 2, ttl: 2 };
/// What the drill allows beyond the failover bound (the controllers' loops, a busy machine).
const FAILOVER_ALLOWANCE: Duration = Duration::from_secs(1);
/// What is done to the lab at the start of a phase.
#[derive(Clone, Copy)]
pub enum Fault {
    None,
    KillProcess(usize),
    BlackHole(usize),
    KillBackends(&'static [usize]),
    Heal,
    /// Every backend of site A stopped (both controllers stay up to decide).
    KillSiteA,
    HealSiteA,
}

impl Fault {
    /// Whether the phase waits for the DNS answer to move between the sites.
    pub fn moves_answer(self) -> bool {
        matches!(self, Fault::KillSiteA | Fault::HealSiteA)
    }
}

/// The schedule: (phase name, what happens at its start).
pub const PHASES: [(&str, Fault); 11] = [
    ("baseline", Fault::None),
    ("kill one backend process", Fault::KillProcess(0)),
    ("heal", Fault::Heal),
    ("black-hole one backend", Fault::BlackHole(1)),
    ("heal", Fault::Heal),
    ("kill zone r1/z1", Fault::KillBackends(&[0, 1, 2, 3])),
    ("heal", Fault::Heal),
    ("kill region r1", Fault::KillBackends(&[0, 1, 2, 3, 4, 5])),
    ("heal", Fault::Heal),
    ("site A down", Fault::KillSiteA),
    ("site A healed", Fault::HealSiteA),
];

/// The longest the name may keep answering a dead site A: the sites' detection bound,
/// then one TTL of the last cached answer.
pub fn failover_bound() -> Duration {
    TIMING.detection_bound() + Duration::from_secs(TIMING.ttl.into())
}

/// The longest the drill accepts between site A's death and the last failed request.
pub fn failover_target() -> Duration {
    failover_bound() + FAILOVER_ALLOWANCE
}

/// How long a phase of `fault` lasts: the site phases also get the time the answer may
/// take to move, so that it moves within them.
pub fn phase_length(fault: Fault, phase: Duration) -> Duration {
    if fault.moves_answer() { phase + failover_target() } else { phase }
}

/// Where each phase starts (since the run began), and where the last one ends.
pub fn phase_bounds(phase: Duration) -> Vec<Duration> {
    let mut bounds = vec![Duration::ZERO];
    for (_, fault) in PHASES {
        bounds.push(bounds[bounds.len() - 1] + phase_length(fault, phase));
    }
    bounds
}
