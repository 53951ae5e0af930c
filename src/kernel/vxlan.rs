//! The VXLAN device as a value: the message that creates it, whether an
//! existing one can be kept, and which other device would collide with it.
//! Pure functions over link views, unit-tested in `devices`.

use std::net::IpAddr;

use rtnetlink::packet_route::link::{InfoKind, LinkMessage};
use rtnetlink::LinkVxlan;

use super::devices::{LinkInfoView, VxlanSpec};

pub(super) fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Vxlan => "vxlan".into(),
        InfoKind::Veth => "veth".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Why an existing VXLAN device cannot be fixed in place and must be
/// recreated (flannel's `vxlanLinksIncompat`): these attributes are fixed at
/// creation. `None` when it is compatible.
pub fn vxlan_incompatibility(have: &LinkInfoView, want: &VxlanSpec) -> Option<String> {
    if have.kind.as_deref() != Some("vxlan") {
        return Some(format!("kind {:?}", have.kind));
    }
    if have.vxlan_id != Some(want.vni) {
        return Some(format!("VNI {:?} != {}", have.vxlan_id, want.vni));
    }
    if have.vxlan_local != Some(want.local) {
        return Some(format!("local {:?} != {}", have.vxlan_local, want.local));
    }
    if have.vxlan_link != Some(want.underlay_index) {
        return Some(format!(
            "underlay index {:?} != {}",
            have.vxlan_link, want.underlay_index
        ));
    }
    if have.vxlan_port != Some(want.port) {
        return Some(format!("port {:?} != {}", have.vxlan_port, want.port));
    }
    if have.vxlan_learning != Some(false) {
        return Some("learning is on".into());
    }
    if have.vxlan_gbp != want.gbp {
        return Some(format!("gbp {} != {}", have.vxlan_gbp, want.gbp));
    }
    None
}

/// The device among `links` (other than `want`'s own name) that already
/// holds `want`'s VNI on its UDP port for the same address family and
/// receive flags: the kernel refuses a second such device with EEXIST, so
/// creating ours would fail only after the lease and the bridge exist.
pub fn vxlan_conflict<'a>(links: &'a [LinkInfoView], want: &VxlanSpec) -> Option<&'a LinkInfoView> {
    links.iter().find(|l| {
        l.kind.as_deref() == Some("vxlan")
            && l.name != want.name
            && l.vxlan_id == Some(want.vni)
            && l.vxlan_port == Some(want.port)
            // A device without a local address is IPv4 unless told otherwise.
            && l.vxlan_local.is_some_and(|ip| ip.is_ipv6()) == want.local.is_ipv6()
            && l.vxlan_gbp == want.gbp
    })
}

/// The message that creates the VXLAN device of `spec`, up, learning off.
pub fn vxlan_link_message(spec: &VxlanSpec) -> LinkMessage {
    let mut b = LinkVxlan::new(&spec.name, spec.vni)
        .dev(spec.underlay_index)
        .port(spec.port)
        .learning(false)
        .mtu(spec.mtu)
        .address(spec.mac.0.to_vec())
        .up();
    b = match spec.local {
        IpAddr::V4(ip) => b.local(ip),
        IpAddr::V6(ip) => b.local6(ip),
    };
    if spec.gbp {
        b = b.gbp();
    }
    b.build()
}
