//! `lb capture` against a running `lb`: while 100 requests go through a nat VIP and 100
//! through a dsr VIP, `lb capture -w FILE` records each of their packets as it came in and
//! as the balancer sent it out (nat: to the backend's address; dsr: to the backend's MAC),
//! tcpdump reads the file, and capture is off again once it ends; `lb capture -w - --count N`
//! piped into `tcpdump -r -` gives tcpdump the 2N packets and ends by itself; a capture
//! left on by a killed `lb capture` is switched off by the next controller.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};
use lb_tests::lab::{
    HTTP_PORT, LB_V4, Lab, LbProcess, VIP_V4, VipSpec, backends_across, lb_bin, lb_config, require_tool,
};
use lb_userspace::dataplane::PacketCapture;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
use pcap_file::pcapng::{Block, PcapNgReader};

const NAT_VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
const REQUESTS: usize = 100;
const EPB_INBOUND: u32 = 1;

/// One captured frame: its direction, the comment and the headers the checks need.
#[derive(Debug, Clone)]
struct Frame {
    inbound: bool,
    comment: String,
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    /// TCP sequence and acknowledgment numbers and flags byte: they tie an out frame to
    /// the in frame it was rewritten from (nat changes addresses and ports, never these).
    seq: (u32, u32, bool, bool, bool),
}

/// How many packets the file holds, and its IPv4 TCP frames.
fn frames_of(pcapng: &[u8]) -> Result<(usize, Vec<Frame>)> {
    let mut reader = PcapNgReader::new(pcapng).context("a pcapng file")?;
    let (mut packets, mut frames) = (0, Vec::new());
    while let Some(block) = reader.next_block() {
        let Block::EnhancedPacket(epb) = block? else { continue };
        packets += 1;
        let (mut inbound, mut comment) = (false, String::new());
        for option in &epb.options {
            match option {
                EnhancedPacketOption::Flags(f) => inbound = f & 3 == EPB_INBOUND,
                EnhancedPacketOption::Comment(c) => comment = c.to_string(),
                _ => {}
            }
        }
        let sliced = SlicedPacket::from_ethernet(&epb.data).context("an Ethernet frame")?;
        let dst_mac = match &sliced.link {
            Some(LinkSlice::Ethernet2(eth)) => eth.destination(),
            _ => [0; 6],
        };
        let Some(NetSlice::Ipv4(ip)) = sliced.net else { continue };
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else { continue };
        let (src, dst) = (IpAddr::V4(ip.header().source_addr()), IpAddr::V4(ip.header().destination_addr()));
        frames.push(Frame {
            inbound,
            comment,
            dst_mac,
            src: SocketAddr::new(src, tcp.source_port()),
            dst: SocketAddr::new(dst, tcp.destination_port()),
            seq: (tcp.sequence_number(), tcp.acknowledgment_number(), tcp.syn(), tcp.fin(), tcp.ack()),
        });
    }
    Ok((packets, frames))
}

/// An HTTP GET on a new connection: the client's address and the backend that answered.
fn request(vip: SocketAddr) -> Result<(SocketAddr, String)> {
    let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let client = stream.local_addr()?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: lab\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response.split_once("\r\n\r\n").context("an HTTP response")?.1;
    Ok((client, body.trim().to_owned()))
}

/// `lb capture ARGS` in the balancer's namespace, its stdout piped when asked.
fn spawn_capture(lb: &LbProcess, ns: &str, args: &[&str], stdout: Stdio) -> Result<Child> {
    Command::new("nsenter")
        .arg(format!("--net={ns}"))
        .arg(lb_bin())
        .arg("capture")
        .args(args)
        .arg("--config")
        .arg(lb.config_path())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting lb capture")
}

fn wait_until_on(capture: &PacketCapture, on: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while capture.is_on()? != on {
        ensure!(Instant::now() < deadline, "capture never switched {}", if on { "on" } else { "off" });
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The lab's backends: name -> (address, MAC of eth0).
fn backend_hosts(lab: &Lab) -> Result<HashMap<String, (IpAddr, [u8; 6])>> {
    let mut hosts = HashMap::new();
    for b in &lab.backends {
        let line = b.ns.output(&["cat", "/sys/class/net/eth0/address"])?;
        let mac: Vec<u8> = line.trim().split(':').map(|h| u8::from_str_radix(h, 16)).collect::<Result<_, _>>()?;
        hosts.insert(b.spec.name.clone(), (IpAddr::V4(b.v4), mac.try_into().map_err(|_| anyhow::anyhow!("a MAC"))?));
    }
    Ok(hosts)
}

fn lab_and_lb(tag: &str) -> Result<(Lab, LbProcess, String)> {
    let lab = Lab::build(tag, backends_across(1, 1, 2), true)?;
    let both = vec![(0, 1), (1, 1)];
    let vips = [
        VipSpec::new("web-nat", IpAddr::V4(NAT_VIP), HTTP_PORT, "tcp", "nat", both.clone()),
        VipSpec::new("web-dsr", IpAddr::V4(VIP_V4), HTTP_PORT, "tcp", "dsr", both),
    ];
    let config = lb_config(&lab, &vips).to_string();
    let lb = LbProcess::start(&lab, &config)?;
    Ok((lab, lb, config))
}

#[test]
fn lb_capture_writes_each_request_packet_as_it_came_and_as_it_was_sent() -> Result<()> {
    require_tool("tcpdump", "tcpdump");
    let (lab, lb, _) = lab_and_lb("capw")?;
    let switch = PacketCapture::open_pinned(&lab.pin_dir())?;
    let file = std::env::temp_dir().join(format!("{}.pcapng", lab.prefix));
    let child = spawn_capture(&lb, &lab.lb.path(), &["-w", file.to_str().context("a path")?], Stdio::null())?;
    let result = (|| -> Result<_> {
        wait_until_on(&switch, true)?;
        let (nat, dsr) = (SocketAddr::new(NAT_VIP.into(), HTTP_PORT), SocketAddr::new(VIP_V4.into(), HTTP_PORT));
        lab.client.run(move || -> Result<Vec<_>> {
            (0..REQUESTS).flat_map(|_| [(nat, request(nat)), (dsr, request(dsr))]).map(|(v, r)| Ok((v, r?))).collect()
        })?
    })();
    // Ended as Ctrl-C would end it; the process is ours, ended by its id.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT)?;
    let output = child.wait_with_output()?;
    let requests = result?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "lb capture failed: {stderr}");
    wait_until_on(&switch, false)?;

    let pcapng = std::fs::read(&file)?;
    let tcpdump = tcpdump_lines(&file);
    std::fs::remove_file(&file)?;
    let (packets, frames) = frames_of(&pcapng)?;
    ensure!(stderr.contains(&format!("{packets} packets written")), "summary {stderr:?}");
    let tcpdump = tcpdump?;
    ensure!(tcpdump == packets, "tcpdump read {tcpdump} packets of {packets}");
    let hosts = backend_hosts(&lab)?;
    for (vip, (client, backend)) in &requests {
        let (backend_ip, backend_mac) = hosts[backend];
        let incoming: Vec<&Frame> = frames.iter().filter(|f| f.inbound && f.src == *client && f.dst == *vip).collect();
        ensure!(incoming.len() >= 3, "{} in frames of {client} -> {vip}", incoming.len());
        for frame in incoming {
            let sent = frames.iter().find(|f| !f.inbound && f.seq == frame.seq && f.comment.contains("XDP_TX"));
            let sent = sent.with_context(|| format!("no out frame for {frame:?}"))?;
            if vip.ip() == IpAddr::V4(NAT_VIP) {
                ensure!(
                    sent.dst == SocketAddr::new(backend_ip, HTTP_PORT) && sent.src.ip() == IpAddr::V4(LB_V4),
                    "{sent:?}"
                );
                ensure!(sent.comment.contains("vip=web-nat"), "{sent:?}");
            } else {
                ensure!(sent.dst == *vip && sent.src == *client && sent.dst_mac == backend_mac, "{sent:?}");
                ensure!(sent.comment.contains(&format!("vip=web-dsr backend={backend_ip}:80")), "{sent:?}");
            }
        }
    }
    Ok(())
}

/// How many packets `tcpdump -r FILE` reads.
fn tcpdump_lines(file: &std::path::Path) -> Result<usize> {
    let out = Command::new("tcpdump").arg("-nn").arg("-r").arg(file).stderr(Stdio::null()).output()?;
    ensure!(out.status.success(), "tcpdump failed");
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

#[test]
fn lb_capture_to_stdout_feeds_tcpdump_and_ends_after_count() -> Result<()> {
    require_tool("tcpdump", "tcpdump");
    let (lab, lb, _) = lab_and_lb("caps")?;
    let switch = PacketCapture::open_pinned(&lab.pin_dir())?;
    let mut capture =
        spawn_capture(&lb, &lab.lb.path(), &["-w", "-", "--count", "10", "--vip", "web-dsr"], Stdio::piped())?;
    let pipe = capture.stdout.take().context("lb capture's stdout")?;
    let tcpdump = Command::new("tcpdump")
        .args(["-nn", "-r", "-"])
        .stdin(pipe)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    wait_until_on(&switch, true)?;
    let dsr = SocketAddr::new(VIP_V4.into(), HTTP_PORT);
    let sent = lab.client.run(move || -> Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut sent = 0;
        while !switch.is_on().is_ok_and(|on| !on) && Instant::now() < deadline {
            request(dsr)?;
            sent += 1;
        }
        Ok(sent)
    })??;
    let status = capture.wait()?;
    let out = tcpdump.wait_with_output()?;
    ensure!(status.success(), "lb capture: {status}");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    ensure!(lines.len() == 20, "tcpdump read {} packets after {sent} requests: {lines:?}", lines.len());
    ensure!(
        lines.iter().all(|l| l.contains(&format!("> {VIP_V4}.80")) || l.contains(&format!("{VIP_V4}.80 >"))),
        "{lines:?}"
    );
    Ok(())
}

#[test]
fn a_controller_that_adopts_the_program_switches_a_stale_capture_off() -> Result<()> {
    let (lab, lb, config) = lab_and_lb("capa")?;
    let switch = PacketCapture::open_pinned(&lab.pin_dir())?;
    let mut capture = spawn_capture(&lb, &lab.lb.path(), &["-w", "/dev/null"], Stdio::null())?;
    wait_until_on(&switch, true)?;
    // Killed where it can't switch capture off; the process is ours, ended by its id.
    capture.kill()?;
    capture.wait()?;
    ensure!(switch.is_on()?, "capture went off without anyone switching it");
    lb.crash()?;
    let _adopting = LbProcess::start(&lab, &config)?;
    ensure!(!switch.is_on()?, "the adopting controller left the stale capture on");
    Ok(())
}
