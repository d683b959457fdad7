//! The packet path's counters, each declared once: the XDP program increments the fields,
//! and the controller sums them over CPUs, exposes them as Prometheus metrics and shows
//! them in `lb status`, all from the same declaration ([`Counters::COUNTERS`]).

/// One counter of a `#[repr(C)]` struct of `u64`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The struct's field.
    pub field: &'static str,
    /// The Prometheus family it is exposed in (the text encoder adds `_total`).
    pub family: &'static str,
    /// The label that tells it from the family's other members, if it shares one.
    pub label: Option<(&'static str, &'static str)>,
    /// The field's doc comment: the family's help when the family has one member.
    pub help: &'static str,
}

/// A struct of counters as [`counters!`] declares it.
pub trait Counters: Copy + Default {
    const COUNTERS: &'static [Counter];
    /// The help of families with several members.
    const FAMILIES: &'static [(&'static str, &'static str)];
    /// The values, in the order of [`Self::COUNTERS`].
    fn values(&self) -> &[u64];
    fn values_mut(&mut self) -> &mut [u64];

    /// Adds `other` field by field (readers sum the per-CPU copies).
    fn add(&mut self, other: &Self) {
        for (a, b) in self.values_mut().iter_mut().zip(other.values()) {
            *a += b;
        }
    }

    /// The value of `field`; zero for a name that is not a field.
    fn get(&self, field: &str) -> u64 {
        Self::COUNTERS.iter().position(|c| c.field == field).map_or(0, |i| self.values()[i])
    }

    /// The sum of the members of `family`.
    fn family_sum(&self, family: &str) -> u64 {
        Self::COUNTERS.iter().zip(self.values()).filter(|(c, _)| c.family == family).map(|(_, v)| v).sum()
    }

    /// The help of `family`.
    fn family_help(family: &str) -> &'static str {
        Self::FAMILIES.iter().find(|(f, _)| *f == family).map_or_else(
            || Self::COUNTERS.iter().find(|c| c.family == family).map_or("", |c| c.help.trim()),
            |(_, help)| help,
        )
    }
}

/// Declares a `#[repr(C)]` struct of `u64` counters and its [`Counters`] impl. Each field is
/// exposed as the family `PREFIX_field`, or as `PREFIX_family` with `field as family`, as
/// `PREFIX_family{label="value"}` with `field as family(label = "value")`; `families` gives
/// the help of families that several fields share.
#[macro_export]
macro_rules! counters {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident($prefix:literal) {
            $(
                $(#[doc = $doc:literal])*
                $field:ident $(as $family:ident $(($label:ident = $value:literal))?)?
            ),* $(,)?
        }
        families { $($fam:ident: $fhelp:literal),* $(,)? }
    ) => {
        $(#[doc = $sdoc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
        pub struct $name {
            $($(#[doc = $doc])* pub $field: u64,)*
        }

        const _: () = assert!(
            core::mem::size_of::<$name>() == 8 * <$name as $crate::Counters>::COUNTERS.len()
        );

        impl $crate::Counters for $name {
            const COUNTERS: &'static [$crate::Counter] = &[$($crate::Counter {
                field: stringify!($field),
                family: $crate::counters!(@family $prefix $field $($family)?),
                label: $crate::counters!(@label $($($label = $value)?)?),
                help: concat!($($doc),*),
            }),*];
            const FAMILIES: &'static [(&'static str, &'static str)] =
                &[$((concat!($prefix, "_", stringify!($fam)), $fhelp)),*];

            fn values(&self) -> &[u64] {
                // SAFETY: `repr(C)` and made only of `u64`s (size asserted above).
                unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u64>(), Self::COUNTERS.len()) }
            }

            fn values_mut(&mut self) -> &mut [u64] {
                // SAFETY: as in `values`.
                unsafe { core::slice::from_raw_parts_mut((self as *mut Self).cast::<u64>(), Self::COUNTERS.len()) }
            }
        }
    };
    (@family $prefix:literal $field:ident) => { concat!($prefix, "_", stringify!($field)) };
    (@family $prefix:literal $field:ident $family:ident) => { concat!($prefix, "_", stringify!($family)) };
    (@label) => { None };
    (@label $label:ident = $value:literal) => { Some((stringify!($label), $value)) };
}

counters! {
    /// Per-VIP counters (per CPU; readers sum over CPUs).
    pub struct VipStats("lb_vip") {
        /// Packets received for the VIP.
        packets,
        /// Bytes received for the VIP.
        bytes,
        /// Flows the VIP sent to a backend.
        new_flows,
        /// nat replies translated back to clients.
        reply_packets,
        /// Bytes of nat replies translated back to clients.
        reply_bytes,
        /// ICMP errors about the VIP's flows delivered to their backend.
        icmp_errors_forwarded,
        /// Packets sent to their backend encapsulated (ipip and gue VIPs).
        encapsulated_packets,
        /// Packets too big for the path once encapsulated, answered to the client with ICMP
        /// "fragmentation needed" / ICMPv6 "packet too big".
        icmp_too_big_sent,
        /// New flows dropped: no backend can take them.
        drop_no_backend as dropped_packets(reason = "no_backend"),
        /// Packets dropped: the FIB has no route to where they go.
        drop_no_route as dropped_packets(reason = "no_route"),
        /// New nat flows dropped: every candidate source port towards the backend is in use.
        drop_nat_ports_exhausted as dropped_packets(reason = "nat_ports_exhausted"),
        /// New nat flows dropped: the flow table or the nat table is full.
        drop_flow_table_full as dropped_packets(reason = "flow_table_full"),
        /// dsr packets dropped: the kernel has no neighbour entry for the next hop yet (the
        /// controller is asked to resolve it).
        drop_no_neighbour as dropped_packets(reason = "no_neighbour"),
        /// nat and encapsulated packets handed to the kernel, which resolves the next hop's
        /// neighbour entry and forwards them.
        passed_no_neighbour,
        /// New dsr flows forwarded without a flow entry (by the Maglev table alone): the
        /// flow table is full.
        untracked_flows,
        /// New connections on the 4-tuple of a closed or expired flow, given a backend afresh.
        reopened_flows,
        /// New flows dropped by the VIP's `new_flow_limit`.
        rate_limited_new_flows as rate_limited_packets(limit = "new_flow_limit"),
        /// New flows dropped by the per-source `source_limit`.
        rate_limited_sources as rate_limited_packets(limit = "source_limit"),
        /// Packets dropped by the VIP's `packet_limit`.
        rate_limited_packets as rate_limited_packets(limit = "packet_limit"),
    }
    families {
        dropped_packets: "Packets for the VIP dropped, by reason.",
        rate_limited_packets: "Packets for the VIP dropped by a rate limit, by limit.",
    }
}

counters! {
    /// Per-backend counters (per CPU).
    pub struct BackendStats("lb_backend") {
        /// Packets sent to the backend.
        packets,
        /// Bytes sent to the backend.
        bytes,
        /// Flows sent to the backend.
        new_flows,
        /// nat replies from the backend.
        reply_packets,
        /// Bytes of nat replies from the backend.
        reply_bytes,
        /// Connection attempts answered with RST or ICMP unreachable (watched VIPs).
        connect_failures,
        /// First HTTP responses with a 5xx status (watched HTTP VIPs).
        responses_5xx,
        /// nat ports taken over from a connection of the backend that was over but not yet
        /// swept: many mean the port range is busy.
        nat_ports_taken_over,
    }
    families {}
}

counters! {
    /// Counters for packets that belong to no VIP, or whose VIP could not be determined.
    pub struct GlobalStats("lb") {
        /// Packets for no VIP, handed to the kernel.
        passed as passed_packets,
        /// Truncated or inconsistent Ethernet/IP/L4 headers: dropped.
        drop_malformed as dropped_packets(reason = "malformed"),
        /// IPv4 fragments or IPv6 fragment headers addressed to a VIP address: dropped
        /// (ports are not visible in later fragments, so no backend can be chosen).
        drop_fragment as dropped_packets(reason = "fragment"),
        /// IPv4 options or IPv6 extension headers on traffic to a VIP address: dropped.
        drop_ip_options as dropped_packets(reason = "ip_options"),
        /// A VIP address, but no VIP on that port and protocol: dropped.
        drop_unknown_vip_port as dropped_packets(reason = "unknown_vip_port"),
        /// ICMP errors to a VIP address that quote no known flow: dropped.
        drop_icmp_unmatched as dropped_packets(reason = "icmp_unmatched"),
        /// The map lookup that every VIP packet needs failed (a controller bug or a race).
        drop_internal as dropped_packets(reason = "internal"),
        /// Passive health signals lost because the ring buffer was full.
        health_signals_lost,
        /// Packet capture records lost because the capture ring buffer was full.
        capture_records_lost,
    }
    families {
        dropped_packets: "Packets dropped before a VIP was found, by reason.",
    }
}

counters! {
    /// `xdp_decap`'s counters (per CPU), on a backend.
    pub struct DecapStats("lb_decap") {
        /// ipip and gue packets to the host, passed on without their outer headers.
        decapsulated,
        /// ipip and gue packets to an address that is not the host's: passed untouched.
        not_for_host,
        /// Packets that are not ipip or gue: passed untouched.
        passed,
    }
    families {}
}
