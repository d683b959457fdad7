//! What `lb flows` and `/v1/flows` show: the flow table's entries decoded (addresses as
//! text, the VIP by name, the backend, the connection's state and how long it has been
//! idle), filtered, capped, and the table `lb flows` prints. Plain Rust over the entries
//! the dataplane read, unit tested without BPF.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use lb_common::{Conn, FlowKey, FlowState, NatState};
use serde::{Deserialize, Serialize};

use crate::flows::is_reverse_of;
use crate::plan::ids::ip_of;

/// Rows an answer holds unless the query asks for another number.
pub const DEFAULT_LIMIT: usize = 1000;
/// Rows an answer holds at most (about 200 bytes of JSON each), whatever the query asks:
/// a table of a million flows never makes a 200 MB answer.
pub const MAX_LIMIT: usize = 100_000;

/// The filters of `/v1/flows`, as its query string (`lb flows` sends this struct).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowQuery {
    /// A VIP's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// A backend's address:port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientFilter>,
    /// Rows wanted ([`DEFAULT_LIMIT`] when absent, at most [`MAX_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl FlowQuery {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT)
    }
}

/// The admin API's path for `query`.
pub fn path(query: &FlowQuery) -> String {
    let encoded = serde_urlencoded::to_string(query).expect("a query of strings and numbers encodes");
    if encoded.is_empty() { "/v1/flows".to_owned() } else { format!("/v1/flows?{encoded}") }
}

/// Which clients a query asks for: an address (any port), an address and port, or a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ClientFilter {
    Address(IpAddr),
    Socket(SocketAddr),
    Prefix(IpNet),
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{given:?} is not a client address, address:port or prefix (e.g. 10.0.0.2, 10.0.0.2:40000, [fd00::2]:40000, 10.0.0.0/24)"
)]
pub struct BadClientFilter {
    pub given: String,
}

impl ClientFilter {
    pub fn matches(&self, client: SocketAddr) -> bool {
        match self {
            ClientFilter::Address(a) => client.ip() == *a,
            ClientFilter::Socket(s) => client == *s,
            ClientFilter::Prefix(p) => p.contains(&client.ip()),
        }
    }
}

impl FromStr for ClientFilter {
    type Err = BadClientFilter;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        s.parse()
            .map(ClientFilter::Socket)
            .or_else(|_| s.parse().map(ClientFilter::Address))
            .or_else(|_| s.parse().map(ClientFilter::Prefix))
            .map_err(|_| BadClientFilter { given: s.to_owned() })
    }
}

impl TryFrom<String> for ClientFilter {
    type Error = BadClientFilter;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for ClientFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientFilter::Address(a) => write!(f, "{a}"),
            ClientFilter::Socket(s) => write!(f, "{s}"),
            ClientFilter::Prefix(p) => write!(f, "{p}"),
        }
    }
}

impl From<ClientFilter> for String {
    fn from(filter: ClientFilter) -> String {
        filter.to_string()
    }
}

/// The flow and nat tables as read at `now_ns` (the packet path's clock).
#[derive(Debug, Default)]
pub struct FlowSnapshot {
    pub flows: Vec<(FlowKey, FlowState)>,
    pub nat: Vec<(FlowKey, NatState)>,
    pub now_ns: u64,
}

/// What the ids in flow entries stand for, as the controller's config and ids say.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub vips: HashMap<u32, String>,
    pub backends: HashMap<u32, SocketAddr>,
    /// Each VIP's mode by id; a flow of a VIP not here shows nat or dsr by its nat port.
    pub modes: HashMap<u32, &'static str>,
}

/// `/v1/flows`: the flows that match a query, at most its limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowList {
    /// Entries in the flow table when it was read.
    pub entries: u64,
    /// Entries that match the query; `flows` holds the first `limit` of them.
    pub matched: u64,
    pub flows: Vec<FlowRow>,
}

/// One flow entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRow {
    pub client: SocketAddr,
    /// tcp or udp.
    pub protocol: String,
    /// The VIP's name; `id N` for an id no configured VIP holds (removed by a reload).
    pub vip: String,
    pub vip_address: SocketAddr,
    /// None for an id no configured backend holds.
    pub backend: Option<SocketAddr>,
    pub backend_id: u32,
    /// nat or dsr.
    pub mode: String,
    /// As `Conn::state_name` names it, with the backend's side in nat.
    pub state: String,
    /// Since the flow began, in whole seconds.
    #[serde(default)]
    pub age_s: u64,
    /// Since the last packet of either side the balancer saw.
    pub idle_ms: u64,
    /// nat: the balancer's source port towards the backend.
    pub nat_port: Option<u16>,
}

fn socket(addr: &lb_common::Addr, family: u8, port: u16) -> SocketAddr {
    SocketAddr::new(ip_of(addr, family), port)
}

/// The flows of `tables` that match `query`, the first `limit` decoded, sorted by VIP and
/// client.
pub fn list(tables: &FlowSnapshot, names: &Names, query: &FlowQuery) -> FlowList {
    let matching = tables.flows.iter().filter(|(key, f)| {
        query.vip.as_ref().is_none_or(|v| names.vips.get(&f.vip_id) == Some(v))
            && query.backend.is_none_or(|b| names.backends.get(&f.backend_id) == Some(&b))
            && query.client.is_none_or(|c| c.matches(socket(&key.src, key.family, key.sport)))
    });
    let (mut matched, mut shown) = (0u64, Vec::new());
    for entry in matching {
        matched += 1;
        if shown.len() < query.limit() {
            shown.push(entry);
        }
    }
    // Only the shown nat flows need their reverse entry, to add the backend's side.
    let wanted: HashMap<&FlowKey, &FlowState> =
        shown.iter().filter(|(_, f)| f.nat_port != 0).map(|(k, f)| (k, f)).collect();
    let reverse: HashMap<&FlowKey, &NatState> = tables
        .nat
        .iter()
        .filter(|(reply, n)| wanted.get(&n.client).is_some_and(|f| is_reverse_of(reply, n, f)))
        .map(|(_, n)| (&n.client, n))
        .collect();
    let mut flows: Vec<FlowRow> = shown
        .into_iter()
        .map(|(key, f)| {
            let conn = Conn::of_flow(f);
            let conn = reverse.get(key).map_or(conn, |n| conn.with_reverse(n));
            row(key, f, &conn, names, tables.now_ns)
        })
        .collect();
    flows.sort_by(|a, b| (&a.vip, a.client).cmp(&(&b.vip, b.client)));
    FlowList { entries: tables.flows.len() as u64, matched, flows }
}

fn row(key: &FlowKey, f: &FlowState, conn: &Conn, names: &Names, now_ns: u64) -> FlowRow {
    FlowRow {
        client: socket(&key.src, key.family, key.sport),
        protocol: if key.proto == lb_common::PROTO_UDP { "udp" } else { "tcp" }.to_owned(),
        vip: names.vips.get(&f.vip_id).cloned().unwrap_or_else(|| format!("id {}", f.vip_id)),
        vip_address: socket(&key.dst, key.family, key.dport),
        backend: names.backends.get(&f.backend_id).copied(),
        backend_id: f.backend_id,
        mode: names.modes.get(&f.vip_id).copied().unwrap_or(if f.nat_port != 0 { "nat" } else { "dsr" }).to_owned(),
        state: conn.state_name().to_owned(),
        age_s: (now_ns / 1_000_000_000).saturating_sub(u64::from(f.started_s)),
        idle_ms: now_ns.saturating_sub(conn.last_seen_ns) / 1_000_000,
        nat_port: (f.nat_port != 0).then_some(f.nat_port),
    }
}

/// The list as `lb flows` prints it: a row per flow, and how many more match.
pub fn table(list: &FlowList) -> String {
    let cells: Vec<[String; 8]> = list.flows.iter().map(cells).collect();
    let header = ["client", "vip", "backend", "mode", "state", "age", "idle", "nat port"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&cells) {
        let line: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let more = list.matched - list.flows.len() as u64;
    if more > 0 {
        let _ = writeln!(
            out,
            "{more} more flows match ({} entries in the table): narrow with --vip, --backend or --client, or raise --limit",
            list.entries
        );
    }
    out
}

fn cells(r: &FlowRow) -> [String; 8] {
    [
        format!("{}/{}", r.client, r.protocol),
        r.vip.clone(),
        r.backend.map_or_else(|| format!("id {}", r.backend_id), |b| b.to_string()),
        r.mode.clone(),
        r.state.clone(),
        humantime::format_duration(std::time::Duration::from_secs(r.age_s)).to_string(),
        idle_text(r.idle_ms),
        r.nat_port.map_or_else(|| "-".to_owned(), |p| p.to_string()),
    ]
}

/// Tenths of seconds under a minute, whole seconds above.
fn idle_text(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{FLOW_ESTABLISHED, FLOW_UDP, PROTO_TCP, PROTO_UDP, SIDE_FIN};

    use crate::plan::ids::addr_bytes;

    const MS: u64 = 1_000_000;

    fn key(client: SocketAddr, vip: SocketAddr, proto: u8) -> FlowKey {
        let ((src, family), (dst, _)) = (addr_bytes(client.ip()), addr_bytes(vip.ip()));
        FlowKey { src, dst, sport: client.port(), dport: vip.port(), proto, family, _pad: [0; 2] }
    }

    fn flow(vip_id: u32, backend_id: u32, nat_port: u16, state: u8, last_ms: u64) -> FlowState {
        FlowState { vip_id, backend_id, nat_port, state, last_seen_ns: last_ms * MS, ..Default::default() }
    }

    fn sock(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A nat connection the client closed and the backend too (its reverse entry says so,
    /// and saw a later packet), a dsr IPv6 one, a UDP one, and one of a VIP id no longer
    /// configured.
    fn tables() -> (FlowSnapshot, Names) {
        let nat_key = key(sock("10.0.0.2:40000"), sock("10.100.0.2:7"), PROTO_TCP);
        let mut closing = flow(0, 0, 20001, FLOW_ESTABLISHED, 1000);
        closing.client = SIDE_FIN;
        closing.started_s = 1;
        let reply = key(sock("10.0.1.11:7"), sock("10.0.0.1:20001"), PROTO_TCP);
        let reverse = NatState {
            client: nat_key,
            backend_id: 0,
            backend: SIDE_FIN,
            last_seen_ns: 1500 * MS,
            ..Default::default()
        };
        let flows = vec![
            (nat_key, closing),
            (key(sock("[fd00::2]:40001"), sock("[fd00:100::1]:7"), PROTO_TCP), flow(1, 1, 0, FLOW_ESTABLISHED, 2000)),
            (key(sock("10.0.0.3:5353"), sock("10.100.0.1:9000"), PROTO_UDP), flow(2, 0, 0, FLOW_UDP, 2500)),
            (key(sock("10.0.0.4:1234"), sock("10.100.0.9:80"), PROTO_TCP), flow(7, 9, 0, FLOW_ESTABLISHED, 0)),
        ];
        let names = Names {
            vips: [(0, "web".to_owned()), (1, "web6".to_owned()), (2, "dns".to_owned())].into(),
            backends: [(0, sock("10.0.1.11:7")), (1, sock("[fd00::1:11]:7"))].into(),
            modes: [(2, "gue")].into(),
        };
        (FlowSnapshot { flows, nat: vec![(reply, reverse)], now_ns: 3000 * MS }, names)
    }

    fn query(q: &str) -> FlowQuery {
        serde_urlencoded::from_str(q).unwrap()
    }

    fn clients(list: &FlowList) -> Vec<String> {
        list.flows.iter().map(|r| r.client.to_string()).collect()
    }

    #[test]
    fn entries_are_decoded_with_names_and_the_backends_side_of_nat() {
        let (tables, names) = tables();
        let list = list(&tables, &names, &FlowQuery::default());
        assert_eq!((list.entries, list.matched), (4, 4));
        let web = list.flows.iter().find(|r| r.vip == "web").unwrap();
        let want = FlowRow {
            client: sock("10.0.0.2:40000"),
            protocol: "tcp".into(),
            vip: "web".into(),
            vip_address: sock("10.100.0.2:7"),
            backend: Some(sock("10.0.1.11:7")),
            backend_id: 0,
            mode: "nat".into(),
            state: "closed".into(),
            age_s: 2,
            idle_ms: 1500,
            nat_port: Some(20001),
        };
        assert_eq!(*web, want, "both FINs seen; idle since the backend's later packet");
        let web6 = list.flows.iter().find(|r| r.vip == "web6").unwrap();
        assert_eq!(
            (web6.client, web6.backend, web6.mode.as_str(), web6.nat_port),
            (sock("[fd00::2]:40001"), Some(sock("[fd00::1:11]:7")), "dsr", None)
        );
        assert_eq!(web6.state, "established");
        let dns = list.flows.iter().find(|r| r.vip == "dns").unwrap();
        assert_eq!((dns.protocol.as_str(), dns.state.as_str(), dns.idle_ms), ("udp", "udp", 500));
        assert_eq!(dns.mode, "gue", "the VIP's mode, where the names have it");
        let gone = list.flows.iter().find(|r| r.vip == "id 7").unwrap();
        assert_eq!((gone.backend, gone.backend_id), (None, 9));
    }

    #[test]
    fn filters_select_by_vip_backend_and_client() {
        let (tables, names) = tables();
        let by = |q: &str| clients(&list(&tables, &names, &query(q)));
        assert_eq!(by("vip=web6"), ["[fd00::2]:40001"]);
        assert_eq!(by("backend=10.0.1.11%3A7"), ["10.0.0.3:5353", "10.0.0.2:40000"], "sorted by VIP name");
        assert_eq!(by("client=10.0.0.2"), ["10.0.0.2:40000"]);
        assert_eq!(by("client=10.0.0.2:40001"), Vec::<String>::new());
        assert_eq!(by("client=10.0.0.0%2F30").len(), 2, "10.0.0.2 and .3");
        assert_eq!(by("client=fd00::/64"), ["[fd00::2]:40001"]);
        assert_eq!(by("vip=web&client=10.0.0.3"), Vec::<String>::new());
    }

    #[test]
    fn the_limit_caps_the_rows_and_the_table_says_how_many_more_match() {
        let (tables, names) = tables();
        let capped = list(&tables, &names, &query("limit=1"));
        assert_eq!((capped.flows.len(), capped.matched), (1, 4));
        let text = table(&capped);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.ends_with("3 more flows match (4 entries in the table): narrow with --vip, --backend or --client, or raise --limit\n"), "{text}");
        let huge = FlowQuery { limit: Some(usize::MAX), ..Default::default() };
        assert_eq!(huge.limit(), MAX_LIMIT);
    }

    #[test]
    fn the_table_has_a_column_per_field_aligned() {
        let (tables, names) = tables();
        let text = table(&list(&tables, &names, &query("vip=web")));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let words: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(words, ["10.0.0.2:40000/tcp", "web", "10.0.1.11:7", "nat", "closed", "2s", "1.5s", "20001"]);
        assert_eq!(lines[0].find("vip"), lines[1].find("web"));
        assert_eq!(idle_text(3_725_000), "1h 2m 5s");
    }

    #[test]
    fn queries_go_through_the_query_string_and_bad_clients_say_what_is_expected() {
        let q = FlowQuery {
            vip: Some("web site".into()),
            backend: Some(sock("[fd00::1:11]:7")),
            client: Some("10.0.0.0/24".parse().unwrap()),
            limit: Some(5),
        };
        let wire = serde_urlencoded::to_string(&q).unwrap();
        assert_eq!(serde_urlencoded::from_str::<FlowQuery>(&wire).unwrap(), q, "{wire}");
        assert_eq!(path(&FlowQuery::default()), "/v1/flows");
        assert_eq!(path(&FlowQuery { limit: Some(3), ..Default::default() }), "/v1/flows?limit=3");
        for good in ["10.0.0.2", "10.0.0.2:1", "[fd00::2]:1", "fd00::2", "fd00::/8"] {
            assert_eq!(good.parse::<ClientFilter>().unwrap().to_string(), good);
        }
        let e = "10.0.0.300".parse::<ClientFilter>().unwrap_err();
        assert!(e.to_string().starts_with("\"10.0.0.300\" is not a client address"), "{e}");
        assert!(serde_urlencoded::from_str::<FlowQuery>("client=nope").is_err());
    }
}
