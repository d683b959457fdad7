//! The invariants every output of the program is checked against, and what the outputs
//! teach the model (which client a nat port belongs to).

use std::ops::Range;

use etherparse::SlicedPacket;

use super::frame::{Layout, wrong_checksums};
use super::world::{Model, Tuple, Vip, World, addr, last_byte};
use crate::packet_env::{LB_MAC, neighbour_mac};
use crate::packets::{XDP_DROP, XDP_PASS, XDP_TX};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_REDIRECT: u32 = 4;

/// What went out (transmitted, or rewritten and passed to the kernel to forward).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sent {
    Forwarded,
    Reply,
    IcmpError,
}

/// A broken invariant: its kind (one per distinct finding) and what was seen.
#[derive(Debug)]
pub struct Violation {
    pub kind: String,
    pub detail: String,
}

fn violation<T>(kind: &str, detail: impl std::fmt::Debug) -> Result<T, Violation> {
    Err(Violation { kind: kind.to_string(), detail: format!("{detail:?}") })
}

fn ensure(cond: bool, kind: &str, detail: impl std::fmt::Debug) -> Result<(), Violation> {
    if cond { Ok(()) } else { violation(kind, detail) }
}

/// One run: `input` gave `verdict` and `output`.
pub struct Run<'a> {
    pub input: &'a [u8],
    pub verdict: u32,
    pub output: &'a [u8],
}

pub fn check(world: &World, model: &mut Model, run: &Run) -> Result<Option<Sent>, Violation> {
    let Run { input, verdict, output } = *run;
    match verdict {
        XDP_ABORTED => return violation("XDP_ABORTED", ()),
        XDP_DROP => return Ok(None),
        XDP_PASS if output == input => return Ok(None),
        XDP_PASS | XDP_TX | XDP_REDIRECT => {}
        other => return violation("unknown verdict", other),
    }
    let (Some(lin), Some(lout)) = (Layout::of(input), Layout::of(output)) else {
        return violation("out: IP lengths beyond the frame", ());
    };
    let out = Out { input, output, lin, lout, transmitted: verdict != XDP_PASS };
    // What the output was sent as, first: the model learns from it even if an invariant
    // of the frame is broken, so that one finding does not make up others.
    let sent = out.classify(world, model);
    out.frame_checks().and(sent).map(Some)
}

struct Out<'a> {
    input: &'a [u8],
    output: &'a [u8],
    lin: Layout,
    lout: Layout,
    transmitted: bool,
}

impl Out<'_> {
    /// The invariants of every frame that goes out, whatever it is.
    fn frame_checks(&self) -> Result<(), Violation> {
        let (input, output, lout) = (self.input, self.output, &self.lout);
        if let Err(e) = SlicedPacket::from_ethernet(output) {
            return violation("out: etherparse refuses the frame", e);
        }
        // Only a transmitted frame is cut to its IP packet: the kernel cuts what it is passed.
        let kept = if self.transmitted { output.len() <= input.len() } else { output.len() == input.len() };
        ensure(kept, "out: frame longer, or cut", (input.len(), output.len()))?;
        // Ethernet frames shorter than 60 bytes are padded.
        let may_pad = output.len() <= 60 || !self.transmitted;
        ensure(lout.end == output.len() || may_pad, "out: IP length differs from the frame", lout)?;
        ensure(output[12..lout.l3] == input[12..self.lin.l3], "out: VLAN tag or ethertype changed", ())?;
        let wrong_in = wrong_checksums(input);
        let broken: Vec<_> = wrong_checksums(output).into_iter().filter(|c| !wrong_in.contains(c)).collect();
        if let Some(first) = broken.first() {
            return violation(&format!("out: {first} checksum broken"), &broken);
        }
        ensure(!self.transmitted || output[6..12] == LB_MAC, "out: source MAC not the balancer's", &output[6..12])
    }

    /// What the output is (a VIP flow's packet, a reply, an ICMP error about a flow), and
    /// whether it went where that kind of packet must go.
    fn classify(&self, world: &World, model: &mut Model) -> Result<Sent, Violation> {
        let (input, lin) = (self.input, &self.lin);
        if let Some(quote) = lin.quote(input).filter(|_| world.is_vip_addr(addr(lin.dst(input)))) {
            return self.icmp_error(world, model, quote).map(|()| Sent::IcmpError);
        }
        let Some(t) = Tuple::of(input) else {
            return violation("out: neither TCP/UDP nor an ICMP error to a VIP", ());
        };
        if let Some(vip) = world.vip(t.dst, t.dport, t.proto) {
            return self.forwarded(world, model, vip, t).map(|()| Sent::Forwarded);
        }
        if t.dst == world.lb(t.dst) {
            return self.reply(model, t).map(|()| Sent::Reply);
        }
        violation("out: not a VIP flow, a reply of one or an ICMP error about one", t)
    }

    fn tuple(&self) -> Result<Tuple, Violation> {
        Tuple::of(self.output).map_or_else(|| violation("out: ports lost", ()), Ok)
    }

    /// The destination MAC is the neighbour entry of `to` (checked when transmitted).
    fn ensure_mac(&self, kind: &str, to: std::net::IpAddr) -> Result<(), Violation> {
        ensure(!self.transmitted || self.output[..6] == neighbour_mac(last_byte(to)), kind, (&self.output[..6], to))
    }

    /// The frame went out as it came but for the MACs (and cut to its IP packet).
    fn ensure_only_macs_changed(&self, kind: &str) -> Result<(), Violation> {
        ensure(self.output[12..] == self.input[12..self.output.len()], kind, ())
    }

    /// Every byte that changed is one of the MACs, addresses, ports or checksums.
    fn ensure_only_translated(&self) -> Result<(), Violation> {
        let may_change = rewritable(&self.lout, self.lout.quote(self.output));
        let l3 = self.lout.l3;
        let changed = (12..self.output.len()).find(|&i| {
            self.input[i] != self.output[i] && !(i >= l3 && may_change.iter().any(|r| r.contains(&(i - l3))))
        });
        ensure(changed.is_none(), "out: a byte changed that translation does not touch", changed)
    }

    fn forwarded(&self, world: &World, model: &mut Model, vip: &Vip, flow: Tuple) -> Result<(), Violation> {
        if !vip.nat {
            let mac = &self.output[..6];
            let Some(&(backend, _)) = vip.backends.iter().find(|(b, _)| *mac == neighbour_mac(last_byte(*b))) else {
                return violation("dsr: sent to a MAC of no backend of its VIP", mac);
            };
            model.forwarded(flow, backend, None);
            ensure(self.transmitted, "dsr: rewritten and passed", ())?;
            return self.ensure_only_macs_changed("dsr: more than the MACs rewritten");
        }
        let out = self.tuple()?;
        // Every connection outlives a run (see `fuzz_config`): a port never changes hands.
        if let Some(before) = model.forwarded(flow, out.dst, Some(out.reversed())) {
            return violation("nat: a live connection's port given to another client flow", (before, flow, out));
        }
        ensure(out.src == world.lb(out.src), "nat: source not the balancer's address", out)?;
        ensure(vip.backends.contains(&(out.dst, out.dport)), "nat: sent to no backend of its VIP", out)?;
        ensure(world.nat_ports.contains(&out.sport), "nat: source port outside the nat range", out)?;
        self.ensure_mac("nat: MAC not the backend's", out.dst)?;
        self.ensure_only_translated()
    }

    fn reply(&self, model: &Model, from_backend: Tuple) -> Result<(), Violation> {
        let Some(&client_flow) = model.nat.get(&from_backend) else {
            return violation("reply: translated for a nat port no forwarded packet had", from_backend);
        };
        let out = self.tuple()?;
        let to = (out.dst, out.dport);
        ensure(to == (client_flow.src, client_flow.sport), "reply: sent to another client", (client_flow, out))?;
        let from = (out.src, out.sport);
        ensure(from == (client_flow.dst, client_flow.dport), "reply: not from its VIP", (client_flow, out))?;
        self.ensure_mac("reply: MAC not the client's", out.dst)?;
        self.ensure_only_translated()
    }

    fn icmp_error(&self, world: &World, model: &Model, quote: usize) -> Result<(), Violation> {
        let Some(quoted) = Tuple::at(self.input, quote, self.lin.end) else {
            return violation("icmp: sent out an error quoting no TCP/UDP packet", ());
        };
        let Some(vip) = world.vip(quoted.src, quoted.sport, quoted.proto) else {
            return violation("icmp: sent out an error quoting no VIP flow", quoted);
        };
        let flow = quoted.reversed();
        let Some(&backend) = model.flows.get(&flow) else {
            return violation("icmp: sent out an error about a flow never forwarded", flow);
        };
        self.ensure_mac("icmp: MAC not the flow's backend's", backend)?;
        if !vip.nat {
            return self.ensure_only_macs_changed("icmp: dsr error rewritten");
        }
        let dst = addr(self.lout.dst(self.output));
        ensure(dst == backend, "icmp: delivered to another backend than its flow's", (flow, dst))?;
        let out_quote = self.lout.quote(self.output).and_then(|q| Tuple::at(self.output, q, self.lout.end));
        let Some(out_quote) = out_quote else {
            return violation("icmp: quote lost", ());
        };
        let owner = model.nat.get(&out_quote);
        ensure(owner == Some(&flow), "icmp: quote translated to another flow's", (flow, out_quote, owner))?;
        self.ensure_only_translated()
    }
}

/// Offsets from the IP header of what translation may rewrite: addresses, ports and
/// checksums, also those of a quoted packet at `quote` (MACs are allowed by the caller).
fn rewritable(layout: &Layout, quote: Option<usize>) -> Vec<Range<usize>> {
    let ip = |v6: bool| if v6 { vec![8..24, 24..40] } else { vec![10..12, 12..20] };
    let mut ranges = ip(layout.v6);
    let l4 = layout.l4 - layout.l3;
    match layout.proto {
        6 => ranges.extend([l4..l4 + 4, l4 + 16..l4 + 18]),
        17 => ranges.extend([l4..l4 + 4, l4 + 6..l4 + 8]),
        _ => ranges.push(l4 + 2..l4 + 4),
    }
    if let Some(q) = quote {
        let q = q - layout.l3;
        let inner_l4 = q + if layout.v6 { 40 } else { 20 };
        ranges.extend(ip(layout.v6).into_iter().map(|r| r.start + q..r.end + q));
        ranges.push(inner_l4..inner_l4 + 4);
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::seeds::frame;
    use crate::fuzz::{CLIENTS, fuzz_config};

    fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
        Tuple { proto: 6, src: src.parse().expect("src"), sport, dst: dst.parse().expect("dst"), dport }
    }

    /// The frame of `t` as the balancer sends it to `to`'s MAC.
    fn sent(t: &Tuple, to: &str) -> Vec<u8> {
        let mut out = frame(t, 0x10, b"data");
        out[..6].copy_from_slice(&neighbour_mac(last_byte(to.parse().expect("to"))));
        out[6..12].copy_from_slice(&LB_MAC);
        out
    }

    /// The oracle must see what a broken program would do: it is what makes the fuzz target
    /// fail, and the program has no such bugs left to show it.
    #[test]
    fn the_oracle_names_what_broke() {
        let world = World::of_config(&fuzz_config(""), CLIENTS).expect("world");
        let mut model = Model::default();
        let mut kind = |input: &[u8], verdict: u32, output: &[u8]| {
            check(&world, &mut model, &Run { input, verdict, output }).map_err(|v| v.kind)
        };
        let client = tcp("10.0.0.2", 1000, "10.100.0.1", 80);
        let to_backend = tcp("10.0.0.1", 20000, "10.0.1.11", 8080);
        let forwarded = sent(&to_backend, "10.0.1.11");
        assert_eq!(kind(&frame(&client, 0x10, b"data"), XDP_TX, &forwarded), Ok(Some(Sent::Forwarded)));
        let (reply_in, reply_out) =
            (frame(&to_backend.reversed(), 0x10, b"data"), sent(&client.reversed(), "10.0.0.2"));
        assert_eq!(kind(&reply_in, XDP_TX, &reply_out), Ok(Some(Sent::Reply)));

        let mut bad_checksum = reply_out.clone();
        bad_checksum[14 + 20 + 16] ^= 1;
        let other_host = tcp("10.0.0.2", 1000, "10.0.9.9", 80);
        let padded = |frame: &[u8]| [frame, &[0; 40]].concat();
        let cases = [
            ("XDP_ABORTED", reply_in.clone(), 0, reply_out.clone()),
            (
                "reply: sent to another client",
                reply_in.clone(),
                XDP_TX,
                sent(&tcp("10.100.0.1", 80, "10.0.0.3", 1000), "10.0.0.3"),
            ),
            ("reply: MAC not the client's", reply_in.clone(), XDP_TX, sent(&client.reversed(), "10.0.0.3")),
            ("out: tcp checksum broken", reply_in.clone(), XDP_TX, bad_checksum),
            ("out: IP length differs from the frame", padded(&reply_in), XDP_TX, padded(&reply_out)),
            (
                "nat: sent to no backend of its VIP",
                frame(&client, 0x10, b"data"),
                XDP_TX,
                sent(&tcp("10.0.0.1", 20000, "10.0.1.12", 8080), "10.0.1.12"),
            ),
            (
                "out: not a VIP flow, a reply of one or an ICMP error about one",
                frame(&other_host, 0x10, b"data"),
                XDP_TX,
                sent(&other_host, "10.0.9.9"),
            ),
        ];
        let other_client = tcp("10.0.0.3", 1000, "10.100.0.1", 80);
        let cases = cases.into_iter().chain([(
            "nat: a live connection's port given to another client flow",
            frame(&other_client, 0x10, b"data"),
            XDP_TX,
            forwarded,
        )]);
        for (want, input, verdict, output) in cases {
            assert_eq!(kind(&input, verdict, &output), Err(want.to_string()), "{want}");
        }
    }
}
