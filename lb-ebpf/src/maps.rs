//! Every map of the program, with its purpose. The static names are the pinned names
//! (see `lb_common::MAP_*`); sizes marked "sized by the controller" are set at load time.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::btf_map,
};
use lb_common::*;

use crate::parse::{Headers, Quoted};
use crate::rewrite::Translation;

/// Every VIP by (address, port, protocol): its id, for new flows (existing flows find the
/// id in their entry).
#[btf_map]
pub static VIPS: HashMap<VipKey, u32, { DEFAULT_MAX_VIPS as usize }> = HashMap::new();
/// Every VIP by id: its mode, active Maglev table and limits (`VipInfo`), and its key, which
/// tells whether a flow entry's id still names the flow's VIP.
#[btf_map]
pub static VIP_ENTRIES: Array<VipEntry, { DEFAULT_MAX_VIPS as usize }> = Array::new();
/// Every VIP address (value: how many VIPs share it), so that traffic to a VIP address that
/// no VIP serves is dropped and counted rather than passed.
#[btf_map]
pub static VIP_ADDRS: HashMap<VipAddrKey, u32, { DEFAULT_MAX_VIPS as usize }> = HashMap::new();
/// Backends by id: address, port, and whether they serve (`BACKEND_*` flags).
#[btf_map]
pub static BACKENDS: Array<Backend, { DEFAULT_MAX_BACKENDS as usize }> = Array::new();
/// Maglev tables, two per VIP (active and the one being built), `ring size` slots each;
/// a slot holds a backend id. Sized by the controller at load time.
#[btf_map]
pub static MAGLEV: Array<u32, 1, MAGLEV_MAP_FLAGS> = Array::new();
/// The flow table's IPv4 flows (`flow_table` picks the map by family): each client -> VIP
/// flow, the backend it stays on and the client's side of its connection. A plain hash map,
/// not an LRU: an entry lives as long as its
/// connection and is removed only when that is over (by the controller's sweep, or here
/// when its port or 4-tuple is taken again), so live connections are never evicted.
#[btf_map]
pub static FLOWS_V4: HashMap<FlowKeyV4, FlowState, { DEFAULT_FLOW_ENTRIES as usize }> = HashMap::new();
/// The flow table's IPv6 flows, as `FLOWS_V4`.
#[btf_map]
pub static FLOWS_V6: HashMap<FlowKey, FlowState, { DEFAULT_FLOW_ENTRIES as usize }> = HashMap::new();
/// nat reverse entries: a reply (backend -> balancer port), the client flow it belongs to
/// and the backend's side of the connection. Removed like flow entries, never evicted,
/// so a port stays with its connection until that is over.
#[btf_map]
pub static NAT: HashMap<FlowKey, NatState, { DEFAULT_FLOW_ENTRIES as usize }> = HashMap::new();
/// Per CPU and backend: where this CPU's search for a free nat port goes on. Ports are
/// freed roughly in the order they were taken, so the port after the last one taken is
/// the likeliest to be free again.
#[btf_map]
pub static NAT_PORT_CURSORS: PerCpuArray<u32, { DEFAULT_MAX_BACKENDS as usize }> = PerCpuArray::new();
/// Balancer-wide settings (own addresses, hash seed, nat port range, VIP address filter).
#[btf_map]
pub static SETTINGS: Array<Settings, 1> = Array::new();
/// Per-VIP counters, per CPU.
#[btf_map]
pub static VIP_STATS: PerCpuArray<VipStats, { DEFAULT_MAX_VIPS as usize }> = PerCpuArray::new();
/// Per-backend counters, per CPU.
#[btf_map]
pub static BACKEND_STATS: PerCpuArray<BackendStats, { DEFAULT_MAX_BACKENDS as usize }> = PerCpuArray::new();
/// Each backend's next hop (FIB and neighbour answer), cached per CPU so that the hot path
/// never writes a cache line another CPU reads.
#[btf_map]
pub static NEXT_HOPS: PerCpuArray<NextHop, { DEFAULT_MAX_BACKENDS as usize }> = PerCpuArray::new();

/// The shared buckets of each VIP's rate limits (see `TokenBucket`).
#[btf_map]
pub static RATE_STATE: Array<VipRateState, { DEFAULT_MAX_VIPS as usize }> = Array::new();
/// Tokens each CPU took from each VIP's shared buckets and has yet to spend.
#[btf_map]
pub static RATE_CPU_TOKENS: PerCpuArray<VipCpuTokens, { DEFAULT_MAX_VIPS as usize }> = PerCpuArray::new();
/// Per-source new-flow buckets: the value is the bucket's TAT.
#[btf_map]
pub static SOURCE_BUCKETS: LruHashMap<SourceKey, u64, { DEFAULT_SOURCE_ENTRIES as usize }> = LruHashMap::new();

/// Passive health signals for the controller (see `HealthSignal`): a few per connection at
/// most, and only for VIPs with outlier detection.
#[btf_map]
pub static HEALTH_SIGNALS: RingBuf<HealthSignal, { 256 * 1024 }> = RingBuf::new();

/// Packet capture's switch and filters (one `CaptureConfig`, all zero when off), read once
/// per packet: an array lookup the kernel inlines, and one branch.
#[btf_map]
pub static CAPTURE: Array<CaptureConfig, 1> = Array::new();
/// Captured frames for `lb capture`, two records per matching packet (in and out).
#[btf_map]
pub static CAPTURE_RING: RingBuf<CaptureRecord, { 4 * 1024 * 1024 }> = RingBuf::new();
/// Where a captured packet's frame is kept as it came in, until its verdict tells whether
/// it matches the filters (per CPU: the record is too big for the stack).
#[btf_map]
pub static CAPTURE_FRAME: PerCpuArray<CaptureRecord, 1> = PerCpuArray::new();

/// `xdp_decap`'s settings (the gue port), written by `lb decap attach`.
#[btf_map]
pub static DECAP_SETTINGS: Array<DecapSettings, 1> = Array::new();
/// The host's addresses (keyed as `VIP_ADDRS`): `xdp_decap` strips only packets to them.
#[btf_map]
pub static DECAP_ADDRS: HashMap<VipAddrKey, u32, 256> = HashMap::new();
/// `xdp_decap`'s counters, per CPU.
#[btf_map]
pub static DECAP_STATS: PerCpuArray<DecapStats, 1> = PerCpuArray::new();

/// Working memory for one packet (see `Scratch`); typed as words so its BTF stays plain.
#[btf_map]
pub static SCRATCH: PerCpuArray<[u64; SCRATCH_WORDS], 1> = PerCpuArray::new();
pub const SCRATCH_WORDS: usize = 64;
const _: () = assert!(core::mem::size_of::<Scratch>() <= SCRATCH_WORDS * 8);

/// Counters of packets that belong to no VIP or left the fast path, per CPU (`GlobalStats`).
#[btf_map]
pub static GLOBAL_STATS: PerCpuArray<GlobalStats, 1> = PerCpuArray::new();

/// What the packet path works on. It lives in a per-CPU map, not on the stack: BPF allows
/// 512 bytes of stack for a whole call chain, and keys of 40 bytes add up quickly.
#[derive(Default)]
pub struct Scratch {
    pub headers: Headers,
    /// The flow as keyed in the flow table (client -> VIP).
    pub flow: FlowKey,
    /// A reply as keyed in `NAT` (backend -> balancer).
    pub reply: FlowKey,
    pub nat: NatState,
    /// A new flow entry, built here to be inserted.
    pub state: FlowState,
    pub quoted: Quoted,
    pub to: Translation,
    /// Kept across packets (per CPU): the coarse clock, read once per tick.
    pub clock: Clock,
    /// When this CPU last logged that nat ports ran out (at most once a second).
    pub ports_exhausted_logged_ns: u64,
    /// What packet capture's filters and records need to know of the packet's way.
    pub mark: Mark,
}

/// The VIP, backend and drop reason a packet met on its way, set where they are found (a
/// store each, capture on or off); reset per packet only while capture is on.
#[derive(Default)]
pub struct Mark {
    pub vip_id: u32,
    pub backend_id: u32,
    /// A `DROP_*` reason of a VIP's drop (`lb_common::capture`), zero when none.
    pub drop: u8,
    /// A nat reply: its client is `Scratch::nat.client.src`, not the packet's source.
    pub reply: bool,
}

/// The coarse clock (`bpf_ktime_get_coarse_ns`, CLOCK_MONOTONIC_COARSE), cached per CPU:
/// it only moves at the timer tick, and `jiffies` tells when that happened with a load
/// (the kernel inlines `bpf_jiffies64`) instead of a helper call per packet.
#[derive(Default)]
pub struct Clock {
    jiffies: u64,
    ns: u64,
}

impl Clock {
    #[inline(always)]
    pub fn now(&mut self) -> u64 {
        // SAFETY (both): plain helper calls.
        let jiffies = unsafe { bpf_jiffies64() };
        if jiffies != self.jiffies || self.ns == 0 {
            self.ns = unsafe { bpf_ktime_get_coarse_ns() };
            self.jiffies = jiffies;
        }
        self.ns
    }
}

/// `tc_check_tunnel`'s backends: by a health check's socket mark, the backend its packets are
/// encapsulated for (in the controller's own small object, on `lb-check`).
#[btf_map]
pub static CHECK_TUNNELS: HashMap<u32, CheckTunnel, { MAX_CHECK_TUNNELS as usize }> = HashMap::new();
