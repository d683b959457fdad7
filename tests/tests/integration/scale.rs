//! Many VIPs: a reload that takes one backend out of one VIP among 50 writes only that VIP's
//! slots (read back from the pinned `MAGLEV` and `VIPS`), and traffic still flows.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use lb_common::{MAP_MAGLEV, MAP_VIP_ENTRIES, MAP_VIPS, VipEntry, VipInfo, VipKey};
use lb_tests::lab::{HTTP_PORT, Lab, LbProcess, VipSpec, backends_across, http_get, lb_config, tally};

const VIPS: usize = 50;
const TABLE: u32 = 4099;
/// The VIP whose first backend the reload takes out.
const CHANGED: usize = 25;

fn vip_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 100, 0, i as u8 + 1))
}

/// Every VIP over the lab's four backends; VIP `without_first` without backend 0.
fn specs(without_first: Option<usize>) -> Vec<VipSpec> {
    (0..VIPS)
        .map(|i| {
            let first = usize::from(without_first == Some(i));
            let backends = (first..4).map(|b| (b, 1)).collect();
            VipSpec::new(&format!("v{i}"), vip_addr(i), HTTP_PORT, "tcp", "nat", backends)
        })
        .collect()
}

/// The `MAGLEV` slots and the VIPs' entries (those with a key in `VIPS`) by VIP id, as the
/// pinned maps hold them.
fn read_maps(pin_dir: &Path) -> Result<(Vec<u32>, BTreeMap<u32, VipInfo>)> {
    let open = |name: &str| aya::maps::MapData::from_pin(pin_dir.join(name)).context("opening a pinned map");
    let maglev: aya::maps::Array<_, u32> = aya::maps::Array::try_from(aya::maps::Map::Array(open(MAP_MAGLEV)?))?;
    let slots = maglev.iter().collect::<Result<Vec<_>, _>>()?;
    let vips: aya::maps::HashMap<_, VipKey, u32> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(open(MAP_VIPS)?))?;
    let by_id: aya::maps::Array<_, VipEntry> =
        aya::maps::Array::try_from(aya::maps::Map::Array(open(MAP_VIP_ENTRIES)?))?;
    let mut entries = BTreeMap::new();
    for entry in vips.iter() {
        let (_, id) = entry?;
        entries.insert(id, by_id.get(&id, 0)?.info);
    }
    Ok((slots, entries))
}

/// A field of the last "tables synced" log line.
fn synced_field(lb: &mut LbProcess, name: &str) -> Result<usize> {
    let line = lb.log().iter().rev().find(|l| l.contains("tables synced")).context("no \"tables synced\"")?.clone();
    let value = line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}=")));
    Ok(value.with_context(|| format!("no {name} in {line:?}"))?.parse()?)
}

/// Who answered `n` new connections to VIP `i`; every one must be answered.
fn answers(lab: &Lab, i: usize, n: usize) -> Result<BTreeMap<String, usize>> {
    let target = SocketAddr::new(vip_addr(i), HTTP_PORT);
    lab.client.run(move || -> Result<_> { Ok(tally((0..n).map(|_| http_get(target)).collect::<Result<Vec<_>>>()?)) })?
}

#[test]
fn a_one_backend_reload_among_50_vips_writes_only_that_vips_slots() -> Result<()> {
    let lab = Lab::build("scl", backends_across(1, 1, 4), false)?;
    let config =
        |without| lb_config(&lab, &specs(without)).balancer(&format!("maglev_table_size = {TABLE}\nmax_vips = {VIPS}"));
    let mut lb = LbProcess::start(&lab, &config(None))?;
    let removed = lab.backends[0].spec.name.clone();
    ensure!(answers(&lab, CHANGED, 40)?.contains_key(&removed), "backend 0 serves VIP {CHANGED} before");
    let (slots_before, vips_before) = read_maps(&lab.pin_dir())?;

    lb.reload(&config(Some(CHANGED)))?;
    let (written, caught_up) = (synced_field(&mut lb, "slots")?, synced_field(&mut lb, "slots_caught_up")?);
    ensure!(synced_field(&mut lb, "tables_built")? == 1, "only the changed VIP's table is built");
    ensure!(synced_field(&mut lb, "vips_switched")? == 1, "only the changed VIP's entry is written");
    let (slots_after, vips_after) = read_maps(&lab.pin_dir())?;

    let half = |slots: &[u32], offset: u32| slots[offset as usize..(offset + TABLE) as usize].to_vec();
    let mut changed_ids = BTreeSet::new();
    for (id, before) in &vips_before {
        let region = (id * 2 * TABLE) as usize..((id + 1) * 2 * TABLE) as usize;
        if slots_before[region.clone()] != slots_after[region] || vips_after[id] != *before {
            changed_ids.insert(*id);
        }
    }
    ensure!(changed_ids.len() == 1, "one VIP's region and entry change, not {changed_ids:?}");
    let id = *changed_ids.first().expect("one");
    let (old, new) = (&vips_before[&id], &vips_after[&id]);
    ensure!(old.table_offset != new.table_offset, "the VIP switched halves");
    let active_before = half(&slots_before, old.table_offset);
    let active_after = half(&slots_after, new.table_offset);
    let moved = active_before.iter().zip(&active_after).filter(|(a, b)| a != b).count();
    // Both halves held the old table; each took exactly the slots that changed.
    ensure!((written, caught_up) == (moved, moved), "written {written}, caught up {caught_up}, changed {moved}");
    ensure!(half(&slots_after, old.table_offset) == active_after, "the half left matches the active one");
    // Maglev's minimal disruption: the removed backend's quarter, and not much more.
    ensure!((TABLE as usize / 4..TABLE as usize / 2).contains(&moved), "{moved} of {TABLE} slots moved");
    let ids_before: BTreeSet<u32> = active_before.iter().copied().collect();
    let ids_after: BTreeSet<u32> = active_after.iter().copied().collect();
    ensure!(ids_before.len() == 4 && ids_after.len() == 3 && ids_after.is_subset(&ids_before), "one backend fewer");

    let after = answers(&lab, CHANGED, 40)?;
    ensure!(!after.contains_key(&removed), "the removed backend still answers VIP {CHANGED}: {after:?}");
    ensure!(answers(&lab, 0, 40)?.contains_key(&removed), "other VIPs keep every backend");
    Ok(())
}
