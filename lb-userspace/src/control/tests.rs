//! Event sequences through the controller's state, with a recorder for the packet path.
//! Backends are on loopback: the checks and neighbour pings the controller starts stay
//! on this host.

use std::net::SocketAddr;

use tokio::sync::oneshot;

use super::state::{Controller, Event, Step};
use crate::admin::{AdminError, AdminRequest, LeftBehind};
use crate::backends::probe::{CheckFailure, CheckResult, Prober};
use crate::config;
use crate::plan::IdAllocator;
use crate::sync::Applied;
use crate::testing::{Recorder, TempFile};

const CONFIG: &str = r#"[balancer]
interfaces = ["eth0"]
ipv4 = "10.0.0.1"
maglev_table_size = 211

[[vip]]
name = "web"
address = "10.100.0.1"
port = 80
health_check = { type = "tcp", interval = "1s", timeout = "500ms", healthy_threshold = 1, unhealthy_threshold = 1 }

[[vip.backend]]
address = "127.0.1.11"

[[vip.backend]]
address = "127.0.1.12"
"#;

/// A controller on `file`'s config whose first tables are written into `maps`.
fn controller(file: &TempFile, maps: &mut Recorder) -> Controller {
    let config = config::load(file.path()).unwrap();
    let ids = IdAllocator::new(config.balancer.max_vips, config.balancer.max_backends);
    let (check_tx, _) = tokio::sync::mpsc::unbounded_channel();
    let mut lb =
        Controller::new(file.path().to_owned(), config, (ids, Applied::default()), Prober::new(check_tx), None, None);
    lb.start(maps).unwrap();
    lb
}

fn backend(last: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 1, last], 80))
}

fn drain(lb: &mut Controller, maps: &mut Recorder, last: u8) -> (anyhow::Result<Step>, Result<(), AdminError>) {
    let (reply, mut answer) = oneshot::channel();
    let request = AdminRequest::Drain { vip: "web".into(), backend: backend(last), drained: true, reply };
    let step = lb.handle(Event::Admin(request), maps);
    (step, answer.try_recv().expect("answered before the event is done"))
}

fn check(lb: &mut Controller, maps: &mut Recorder, last: u8, passed: bool) {
    let refused = CheckFailure::Io { step: "connect", message: "refused".into() };
    let outcome = if passed { Ok(()) } else { Err(refused) };
    let result = CheckResult { key: ("web".into(), backend(last)), outcome };
    assert_eq!(lb.handle(Event::Check(result), maps).unwrap(), Step::Continue);
}

#[tokio::test]
async fn a_drain_is_in_the_tables_before_its_answer() {
    let file = TempFile::new("control-drain.toml", CONFIG.as_bytes());
    let mut maps = Recorder::default();
    let mut lb = controller(&file, &mut maps);
    assert_eq!(maps.serving(0), [0, 1].into());
    let (step, answer) = drain(&mut lb, &mut maps, 12);
    assert_eq!((step.unwrap(), answer.unwrap()), (Step::Continue, ()));
    assert_eq!(maps.serving(0), [0].into());
    assert_eq!(lb.status(&maps).vips[0].backends[1].state, "draining");
}

#[tokio::test]
async fn a_drain_of_an_unknown_backend_is_refused_and_writes_nothing() {
    let file = TempFile::new("control-unknown.toml", CONFIG.as_bytes());
    let mut maps = Recorder::default();
    let mut lb = controller(&file, &mut maps);
    let writes = maps.ops.len();
    let (step, answer) = drain(&mut lb, &mut maps, 99);
    assert_eq!(step.unwrap(), Step::Continue);
    assert!(matches!(answer, Err(AdminError::NoSuchBackend { .. })), "{answer:?}");
    assert_eq!(maps.ops.len(), writes);
}

#[tokio::test]
async fn a_map_that_refuses_a_drain_is_a_server_error_and_ends_the_loop() {
    let file = TempFile::new("control-failing.toml", CONFIG.as_bytes());
    let mut maps = Recorder::default();
    let mut lb = controller(&file, &mut maps);
    maps.failing = true;
    let (step, answer) = drain(&mut lb, &mut maps, 12);
    assert!(step.is_err());
    let error = answer.unwrap_err();
    assert!(matches!(error, AdminError::Maps(_)), "{error:?}");
    assert_eq!(error.status().as_u16(), 500);
}

#[tokio::test]
async fn failing_checks_take_a_backend_out_and_a_passing_one_brings_it_back() {
    let file = TempFile::new("control-checks.toml", CONFIG.as_bytes());
    let mut maps = Recorder::default();
    let mut lb = controller(&file, &mut maps);
    check(&mut lb, &mut maps, 11, false);
    assert_eq!(maps.serving(0), [1].into());
    check(&mut lb, &mut maps, 11, true);
    assert_eq!(maps.serving(0), [0, 1].into());
}

#[tokio::test]
async fn a_refused_reload_keeps_the_tables_and_an_applied_one_writes_the_difference() {
    let file = TempFile::new("control-reload.toml", CONFIG.as_bytes());
    let mut maps = Recorder::default();
    let mut lb = controller(&file, &mut maps);
    let writes = maps.ops.len();
    std::fs::write(file.path(), CONFIG.replace("[[vip.backend]]\naddress = \"127.0.1.12\"", "[[vip.backend]")).unwrap();
    assert_eq!(lb.handle(Event::Hangup, &mut maps).unwrap(), Step::Continue);
    assert_eq!(maps.ops.len(), writes);
    let status = lb.status(&maps);
    assert_eq!(status.generation, 1);
    assert!(!status.last_reload.unwrap().applied);

    let one_backend = CONFIG.replace("\n[[vip.backend]]\naddress = \"127.0.1.12\"\n", "");
    std::fs::write(file.path(), one_backend).unwrap();
    assert_eq!(lb.handle(Event::Hangup, &mut maps).unwrap(), Step::Continue);
    assert_eq!(lb.status(&maps).generation, 2);
    assert_eq!(maps.serving(0), [0].into());
    assert!(maps.ops[writes..].iter().any(|op| op == "backend 1 flags 0"), "{:?}", &maps.ops[writes..]);
}

#[tokio::test]
async fn a_stop_request_ends_the_loop() {
    let file = TempFile::new("control-stop.toml", CONFIG.as_bytes());
    let mut maps = Recorder::default();
    let mut lb = controller(&file, &mut maps);
    let (reply, answer) = oneshot::channel();
    let step = lb.handle(Event::Admin(AdminRequest::Stop { detach: true, reply }), &mut maps).unwrap();
    assert_eq!(step, Step::Stop { detach: true });
    let left = answer.await.unwrap();
    assert!(matches!(left, LeftBehind::PinnedProgram | LeftBehind::PrivatePins), "{left:?}");
}

#[tokio::test]
async fn lb_flows_gets_the_names_of_the_ids_and_an_unknown_vip_is_refused() {
    let file = TempFile::new("control-flows.toml", CONFIG.as_bytes());
    let mut maps = Recorder::default();
    let mut lb = controller(&file, &mut maps);
    let mut ask = |vip: Option<&str>| {
        let (reply, mut answer) = oneshot::channel();
        let request = AdminRequest::Flows { vip: vip.map(str::to_owned), reply };
        assert_eq!(lb.handle(Event::Admin(request), &mut maps).unwrap(), Step::Continue);
        answer.try_recv().expect("answered before the event is done")
    };
    let (_, names) = ask(Some("web")).unwrap();
    assert_eq!(names.vips, [(0, "web".to_owned())].into());
    assert_eq!(names.backends, [(0, backend(11)), (1, backend(12))].into());
    assert!(matches!(ask(Some("nope")), Err(AdminError::NoSuchVip(name)) if name == "nope"));
}

/// Waits (5 s at most) until the include file at `path` satisfies `holds`; its text.
async fn include_file_until(path: &std::path::Path, holds: impl Fn(&str) -> bool) -> String {
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(path)
            && holds(&text)
        {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{}: {:?}", path.display(), std::fs::read_to_string(path));
}

#[tokio::test]
async fn bgp_announces_the_vip_while_it_takes_new_flows_and_a_drain_is_kept_for_the_next_controller() {
    let dir = tempfile::tempdir().unwrap();
    let include = dir.path().join("bird-lb.conf");
    let text = format!(
        "{CONFIG}\n[bgp]\nasn = 65001\ninclude_file = \"{}\"\nbird_socket = \"{}\"\n\
         [[bgp.peer]]\naddress = \"10.0.0.254\"\nasn = 65000\n",
        include.display(),
        dir.path().join("no-bird.ctl").display()
    );
    let file = TempFile::new("control-bgp.toml", text.as_bytes());
    let start = |maps: &mut Recorder| {
        let config = config::load(file.path()).unwrap();
        let ids = IdAllocator::new(config.balancer.max_vips, config.balancer.max_backends);
        let (check_tx, _) = tokio::sync::mpsc::unbounded_channel();
        let bgp = crate::bgp::BgpService::start(&config);
        let tables = (ids, Applied::default());
        let mut lb = Controller::new(file.path().to_owned(), config, tables, Prober::new(check_tx), None, bgp);
        lb.start(maps).unwrap();
        lb
    };
    let mut maps = Recorder::default();
    let mut lb = start(&mut maps);
    // BIRD is away: the file is written all the same (BIRD reads it when it starts).
    include_file_until(&include, |t| t.contains("route 10.100.0.1/32 blackhole;")).await;
    check(&mut lb, &mut maps, 11, false);
    check(&mut lb, &mut maps, 12, false);
    include_file_until(&include, |t| !t.contains("route ")).await;
    check(&mut lb, &mut maps, 12, true);
    include_file_until(&include, |t| t.contains("route 10.100.0.1/32")).await;

    let (reply, mut answer) = oneshot::channel();
    lb.handle(Event::Admin(AdminRequest::Host { drained: true, reply }), &mut maps).unwrap();
    let report = answer.try_recv().unwrap().unwrap();
    assert_eq!((report.host.as_str(), report.announced.len()), ("drained", 1));
    include_file_until(&include, |t| t.contains("bgp_med = 1000;") && t.contains("lb-host-state: drained")).await;
    let status = lb.status(&maps).bgp.unwrap();
    assert!(!status.bird_up && status.last_error.as_ref().is_some_and(|e| e.contains("no-bird.ctl")), "{status:?}");
    drop(lb);
    // The next controller adopts the drain from the file.
    let lb = start(&mut maps);
    assert_eq!(lb.status(&maps).bgp.unwrap().host.as_str(), "drained");
}

#[tokio::test]
async fn checks_through_tunnels_get_marks_and_a_reload_whose_tunnels_cannot_be_set_up_is_refused() {
    let file = TempFile::new("control-tunnels.toml", CONFIG.as_bytes());
    let mut maps = Recorder::default();
    let mut lb = controller(&file, &mut maps);
    assert!(maps.check_tunnels.is_empty(), "nat: checked directly");
    // In ipip, each backend is checked through its tunnel (from the balancer's loopback
    // address here: the kernel sends nothing from it to the VIP, should a check start).
    let ipip = CONFIG.replace("port = 80\n", "port = 80\nmode = \"ipip\"\n").replace("10.0.0.1", "127.0.0.1");
    std::fs::write(file.path(), &ipip).unwrap();
    maps.failing = true;
    assert_eq!(lb.handle(Event::Hangup, &mut maps).unwrap(), Step::Continue);
    let status = lb.status(&maps);
    assert_eq!(status.generation, 1);
    let refusal = status.last_reload.unwrap();
    assert!(!refusal.applied && refusal.message.contains("lb-check"), "{}", refusal.message);
    maps.failing = false;
    assert_eq!(lb.handle(Event::Hangup, &mut maps).unwrap(), Step::Continue);
    assert_eq!(lb.status(&maps).generation, 2);
    let backends: Vec<[u8; 4]> = maps.check_tunnels.values().map(|t| t.backend.addr[..4].try_into().unwrap()).collect();
    assert_eq!(backends, [[127, 0, 1, 11], [127, 0, 1, 12]]);
    // Back to nat: the tunnels go.
    std::fs::write(file.path(), CONFIG).unwrap();
    assert_eq!(lb.handle(Event::Hangup, &mut maps).unwrap(), Step::Continue);
    assert!(maps.check_tunnels.is_empty());
}
