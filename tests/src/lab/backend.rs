//! Backends: their specs and labels, and the servers each runs (HTTP, the line protocol, UDP).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::*;

#[derive(Clone, Debug)]
pub struct BackendSpec {
    pub name: String,
    pub region: String,
    pub zone: String,
}

/// `regions` x `zones_per_region` x `per_zone` backends named r1-z1-b1 and so on.
pub fn backends_across(regions: usize, zones_per_region: usize, per_zone: usize) -> Vec<BackendSpec> {
    let mut out = Vec::new();
    for r in 1..=regions {
        for z in 1..=zones_per_region {
            for b in 1..=per_zone {
                out.push(BackendSpec {
                    name: format!("r{r}-z{z}-b{b}"),
                    region: format!("r{r}"),
                    zone: format!("z{z}"),
                });
            }
        }
    }
    out
}

pub struct Backend {
    pub spec: BackendSpec,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    // Declared before `ns`: fields drop in order, so the servers stop before the namespace goes.
    servers: Option<Servers>,
    served: Arc<ServedCounters>,
    dsr: bool,
    /// Behind the lab's router (see `routed`), not on its segment.
    pub(super) routed: bool,
    pub ns: Netns,
}

/// Requests a backend's servers have answered, by protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// HTTP requests on port 80.
    pub http: u64,
    /// Lines on port 7 (not connections).
    pub line: u64,
    /// Datagrams on port 9000.
    pub udp: u64,
}

/// Each is incremented just before the answer is sent, so a client that got an answer
/// always finds it counted.
#[derive(Default)]
struct ServedCounters {
    http: AtomicU64,
    line: AtomicU64,
    udp: AtomicU64,
    /// Percent of HTTP requests answered `500` (see [`Backend::answer_5xx`]).
    http_5xx_percent: AtomicU64,
    /// The source address of every connection and datagram (its log of clients).
    clients: std::sync::Mutex<std::collections::BTreeSet<IpAddr>>,
}

impl ServedCounters {
    fn saw(&self, client: IpAddr) {
        self.clients.lock().expect("clients").insert(client.to_canonical());
    }
}

impl Backend {
    /// A backend in its namespace `ns`, its servers started.
    pub(super) fn start(spec: BackendSpec, v4: Ipv4Addr, v6: Ipv6Addr, dsr: bool, ns: Netns) -> Result<Self> {
        let mut backend = Backend { spec, v4, v6, servers: None, served: Arc::default(), dsr, routed: false, ns };
        backend.restart()?;
        Ok(backend)
    }

    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 { IpAddr::V6(self.v6) } else { IpAddr::V4(self.v4) }
    }

    /// Drops (`on`) or lets through again every packet of the backend, while its servers
    /// keep running: its link goes down.
    pub fn black_hole(&self, on: bool) -> Result<()> {
        // Linux drops IPv6 addresses of a link that goes down, unless told to keep them.
        self.ns.sysctl("net.ipv6.conf.eth0.keep_addr_on_down=1")?;
        self.ns.ip(&["link", "set", "eth0", if on { "down" } else { "up" }])
    }

    /// Stops the backend's servers: new connections are refused from then on (connections
    /// already open are closed within a few hundred milliseconds).
    pub fn stop(&mut self) {
        self.servers.take();
    }

    /// Starts the servers again after [`Self::stop`] (a no-op if they run).
    pub fn restart(&mut self) -> Result<()> {
        if self.servers.is_none() {
            self.servers = Some(Servers::start(&self.ns, &self.spec.name, &self.local_addrs(), self.served.clone())?);
        }
        Ok(())
    }

    /// From now on answers `percent` of its HTTP requests with `500 Internal Server Error`,
    /// spread as evenly as counting allows, the first half a period in (at 2%: the 25th,
    /// 75th, 125th, ... request), so any run of requests fails that share within one.
    pub fn answer_5xx(&self, percent: u64) {
        self.served.http_5xx_percent.store(percent.min(100), Ordering::Relaxed);
    }

    /// Requests answered so far (counted since the lab was built; never reset).
    pub fn served(&self) -> Served {
        Served {
            http: self.served.http.load(Ordering::Relaxed),
            line: self.served.line.load(Ordering::Relaxed),
            udp: self.served.udp.load(Ordering::Relaxed),
        }
    }

    /// The source addresses of the connections and datagrams it got (as its servers see
    /// them: behind nat the balancer's, with direct return the clients' own).
    pub fn clients(&self) -> std::collections::BTreeSet<IpAddr> {
        self.served.clients.lock().expect("clients").clone()
    }

    /// The addresses its UDP server answers on (the VIPs too in a dsr lab); an IPv6-only
    /// backend has no IPv4 address of its own (unspecified).
    fn local_addrs(&self) -> Vec<IpAddr> {
        let mut local: Vec<IpAddr> = vec![self.v4.into(), self.v6.into()];
        if self.dsr {
            local.extend([IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)]);
        }
        local.retain(|a| !a.is_unspecified());
        local
    }
}

/// A backend's servers: threads that stop when this is dropped.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &Netns, name: &str, local: &[IpAddr], served: Arc<ServedCounters>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (ready, ready_rx) = mpsc::channel::<Result<()>>();
        for port in [HTTP_PORT, LINE_PORT] {
            let (stop, name, served) = (stop.clone(), name.to_owned(), served.clone());
            threads.push(spawn_server(
                ns,
                &ready,
                // Dual-stack: also accepts IPv4 (v4-mapped).
                move || {
                    let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
                    listener.set_nonblocking(true)?;
                    Ok(listener)
                },
                move |listener| serve_tcp(&listener, &stop, &name, port, &served),
            )?);
        }
        for &addr in local {
            let (stop, name, served) = (stop.clone(), name.to_owned(), served.clone());
            // One socket per local address, so replies leave from the address asked (the VIP in dsr).
            threads.push(spawn_server(
                ns,
                &ready,
                move || {
                    let socket = UdpSocket::bind((addr, UDP_PORT))?;
                    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
                    Ok(socket)
                },
                move |socket| {
                    let mut buf = [0u8; 1500];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((_, from)) = socket.recv_from(&mut buf) {
                            // Counted before answering: whoever sees the answer sees the count.
                            served.saw(from.ip());
                            served.udp.fetch_add(1, Ordering::Relaxed);
                            let _ = socket.send_to(name.as_bytes(), from);
                        }
                    }
                },
            )?);
        }
        for _ in 0..threads.len() {
            ready_rx.recv_timeout(Duration::from_secs(10)).context("backend server did not start")??;
        }
        Ok(Self { stop, threads })
    }
}

/// Spawns a server thread in `ns`: `bind` runs there and its outcome is reported on
/// `ready`; on success `serve` runs with what it bound.
fn spawn_server<S: 'static>(
    ns: &Netns,
    ready: &mpsc::Sender<Result<()>>,
    bind: impl FnOnce() -> std::io::Result<S> + Send + 'static,
    serve: impl FnOnce(S) + Send + 'static,
) -> Result<JoinHandle<()>> {
    let ready = ready.clone();
    ns.spawn(move || match bind() {
        Ok(bound) => {
            let _ = ready.send(Ok(()));
            serve(bound);
        }
        Err(e) => {
            let _ = ready.send(Err(e.into()));
        }
    })
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Accepts until `stop`; each connection gets a thread (threads spawned here inherit the
/// namespace of this one). Connection threads also end soon after `stop`.
fn serve_tcp(listener: &TcpListener, stop: &Arc<AtomicBool>, name: &str, port: u16, served: &Arc<ServedCounters>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                served.saw(peer.ip());
                let (name, stop, served) = (name.to_owned(), stop.clone(), served.clone());
                std::thread::spawn(move || {
                    let _ = if port == HTTP_PORT {
                        answer_http(stream, &name, &served)
                    } else {
                        answer_lines(stream, &name, &stop, &served)
                    };
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn answer_http(mut stream: TcpStream, name: &str, served: &ServedCounters) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let body = format!("{name}\n");
    let n = served.http.fetch_add(1, Ordering::Relaxed);
    let percent = served.http_5xx_percent.load(Ordering::Relaxed);
    // A request fails when it takes the rounded count of failures due to the next integer.
    let due = |requests: u64| (requests * percent + 50) / 100;
    let status = if due(n + 1) > due(n) { "500 Internal Server Error" } else { "200 OK" };
    // One write, so the status line leaves in the first segment: the packet path reads the
    // status class there (`write!` on the stream would send "HTTP/1.0 " alone).
    let response = format!("HTTP/1.0 {status}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    stream.write_all(response.as_bytes())
}

/// Answers every line with the backend's name and keeps the connection open until the
/// client closes it or the servers stop.
fn answer_lines(stream: TcpStream, name: &str, stop: &AtomicBool, served: &ServedCounters) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()),
            Ok(_) if line.ends_with(b"\n") => {
                served.line.fetch_add(1, Ordering::Relaxed);
                writeln!(writer, "{name}")?;
                line.clear();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
