//! What the host must give the program: a bpffs (and whether it outlives this process),
//! interface settings, the memlock limit, and `xdp_pass` on a veth peer.

use super::*;

impl Dataplane {
    /// Attaches the object's `xdp_pass` program to `iface` in driver mode and pins the
    /// attachment (see [`pass_link_pin`]), so it stays after this process ends: on veth, a
    /// frame the balancer sends with XDP_TX is only delivered if the peer has an XDP program.
    pub fn attach_pass_pinned(iface: &str) -> Result<PathBuf> {
        let path = pass_link_pin(iface);
        anyhow::ensure!(!path.exists(), "{} exists: xdp_pass is attached to {iface} already", path.display());
        Self::attach_small_pinned(PROG_PASS, iface, &path, XdpModeSetting::Driver, |_| Ok(()))
    }

    /// Loads the object with the smallest maps, lets `prepare` write them, attaches its
    /// program `name` to `iface` in `mode` and pins the attachment at `path`.
    pub(super) fn attach_small_pinned(
        name: &str,
        iface: &str,
        path: &Path,
        mode: XdpModeSetting,
        prepare: impl FnOnce(&mut Self) -> Result<()>,
    ) -> Result<PathBuf> {
        ensure_bpffs()?;
        let mut dataplane = Self::load(MapSizes::SMALLEST, None)?;
        prepare(&mut dataplane)?;
        let link = attach_link(dataplane.program(name)?, iface, mode)?;
        link.pin(path).with_context(|| format!("pinning {}", path.display()))?;
        Ok(path.to_owned())
    }

    /// Detaches what [`attach_pass_pinned`](Self::attach_pass_pinned) attached to `iface`.
    pub fn detach_pass_pinned(iface: &str) -> Result<()> {
        detach_pinned_link(&pass_link_pin(iface), &format!("lb xdp-pass attach {iface}"))
    }
}

/// Unpins (and so detaches) the attachment pinned at `path` by the command `attached_by`.
pub(super) fn detach_pinned_link(path: &Path, attached_by: &str) -> Result<()> {
    let link =
        PinnedLink::from_pin(path).with_context(|| format!("opening {} (was `{attached_by}` run?)", path.display()))?;
    link.unpin().with_context(|| format!("unpinning {}", path.display()))?;
    Ok(())
}

/// Whether the bpffs at /sys/fs/bpf here is not the one the process that started lb sees:
/// `ip netns exec` (or `unshare -m`) gives its command a mount namespace with a /sys of its
/// own, where lb mounts a bpffs that ends with this process, and with it the pins, the
/// pinned attachments and so the program. (A shell started that way, which then starts
/// lb, shares lb's view: that case is not recognised.)
pub fn pins_are_private() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let here = std::fs::metadata(crate::config::BPF_FS);
    let parent =
        std::fs::metadata(format!("/proc/{}/root{}", std::os::unix::process::parent_id(), crate::config::BPF_FS));
    match (here, parent) {
        (Ok(here), Ok(parent)) => here.dev() != parent.dev(),
        // Not mounted yet, or the parent's view is not readable: nothing to tell.
        _ => false,
    }
}

/// Where `lb xdp-pass attach IFACE` pins its attachment: named after the interface and
/// the network namespace, whose interfaces may have the same names as another's.
pub fn pass_link_pin(iface: &str) -> PathBuf {
    netns_pin("lb-xdp-pass", iface)
}

/// A pin under /sys/fs/bpf for `iface` of this network namespace: `PREFIX-NETNS-IFACE`.
pub(super) fn netns_pin(prefix: &str, iface: &str) -> PathBuf {
    use std::os::unix::fs::MetadataExt as _;
    let netns = std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino());
    Path::new(crate::config::BPF_FS).join(format!("{prefix}-{netns}-{iface}"))
}

/// What a user who ran `lb run` in a private mount namespace should do instead.
pub const PRIVATE_PINS_ADVICE: &str = "the bpffs at /sys/fs/bpf is private to this process's mount namespace \
     (`ip netns exec` remounts /sys): the pins, and with them the attached program, end when lb exits; \
     enter only the network namespace instead: `nsenter --net=/run/netns/NAME lb run ...`";

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
pub fn ensure_bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts.lines().any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf")) {
        return Ok(());
    }
    info!("mounting bpffs at /sys/fs/bpf");
    std::fs::create_dir_all("/sys/fs/bpf")?;
    let status = std::process::Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).status()?;
    if !status.success() {
        bail!("mounting bpffs at /sys/fs/bpf failed ({status})");
    }
    Ok(())
}

/// What the kernel must allow on an attached interface, and why.
const INTERFACE_SETTINGS: [(&str, &str, &str); 4] = [
    ("ipv4", "forwarding", "the FIB lookup in XDP refuses interfaces that don't forward"),
    ("ipv6", "forwarding", "the FIB lookup in XDP refuses interfaces that don't forward"),
    (
        "ipv4",
        "accept_local",
        "nat packets handed to the kernel to resolve their next hop carry the balancer's own source address",
    ),
    // IPv6 forwards by the global `all.forwarding` only, unless an interface forces it
    // (Linux 6.17 and later): the host's other interfaces keep their behaviour.
    ("ipv6", "force_forwarding", "the kernel forwards IPv6 nat packets handed to it to resolve their next hop"),
];

/// Sets [`INTERFACE_SETTINGS`] on `iface`.
pub(super) fn prepare_interface(iface: &str) -> Result<()> {
    for (family, setting, why) in INTERFACE_SETTINGS {
        let path = format!("/proc/sys/net/{family}/conf/{iface}/{setting}");
        match std::fs::read_to_string(&path) {
            Ok(value) if value.trim() == "1" => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && setting == "force_forwarding" => {
                if std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").is_ok_and(|v| v.trim() != "1") {
                    warn!(
                        iface,
                        "this kernel has no per-interface IPv6 force_forwarding: IPv6 nat packets whose next hop has \
                         no neighbour entry yet are dropped by the kernel unless net.ipv6.conf.all.forwarding=1"
                    );
                }
                continue;
            }
            _ => {}
        }
        std::fs::write(&path, "1").with_context(|| format!("setting {path}"))?;
        info!(iface, family, setting, "set to 1: {why}");
    }
    Ok(())
}

pub(super) fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall on a valid struct. Kernels with memcg accounting ignore it.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        debug!("could not raise RLIMIT_MEMLOCK; only kernels before 5.11 need it");
    }
}
