//! Turning TX checksum offload off over ethtool's generic netlink family
//! (`ETHTOOL_MSG_FEATURES_SET`), what `ethtool -K IF tx off` does. The
//! `ethtool` crate can only read features, so the request is built here.
//!
//! The family id is resolved once per process (`CTRL_CMD_GETFAMILY` for
//! `"ethtool"`; generic netlink family ids are global, not per netns) and
//! cached. The request names the device (`ETHTOOL_A_HEADER_DEV_NAME`,
//! looked up in the netns of the socket) and carries
//! `ETHTOOL_A_FEATURES_WANTED` as a bit-list bitset (no
//! `ETHTOOL_A_BITSET_NOMASK`: only the listed bits change) naming the
//! `tx-checksum-*` features, each without `ETHTOOL_A_BITSET_BIT_VALUE`
//! (= off). Features a device cannot change are ignored by the kernel,
//! which also drops what depends on checksumming (TSO and friends).
//!
//! What is not here: reading features back (tests use `ethtool -k`), or
//! any other ethtool setting.

use std::sync::OnceLock;

use netlink_packet_core::{
    DecodeError, Emitable, Nla, ParseableParametrized, NLA_F_NESTED, NLM_F_ACK,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

use super::sock::{NlError, SyncSocket};

/// The generic netlink family name.
pub const ETHTOOL_GENL_NAME: &str = "ethtool";
const ETHTOOL_GENL_VERSION: u8 = 1;
const ETHTOOL_MSG_FEATURES_SET: u8 = 12;

const ETHTOOL_A_FEATURES_HEADER: u16 = 1;
const ETHTOOL_A_FEATURES_WANTED: u16 = 3;
const ETHTOOL_A_HEADER_DEV_NAME: u16 = 2;
const ETHTOOL_A_HEADER_FLAGS: u16 = 3;
const ETHTOOL_FLAG_OMIT_REPLY: u32 = 1 << 1;
const ETHTOOL_A_BITSET_BITS: u16 = 3;
const ETHTOOL_A_BITSET_BITS_BIT: u16 = 1;
const ETHTOOL_A_BITSET_BIT_NAME: u16 = 2;

/// The features `ethtool -K IF tx off` turns off (its `tx-checksum-*`
/// pattern). On a veth `tx-checksum-ip-generic` and `tx-checksum-sctp`
/// are the ones set; the others are fixed off.
pub const TX_CHECKSUM_FEATURES: [&str; 5] = [
    "tx-checksum-ipv4",
    "tx-checksum-ip-generic",
    "tx-checksum-ipv6",
    "tx-checksum-fcoe-crc",
    "tx-checksum-sctp",
];

/// A generic netlink attribute of the ethtool family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EtNla {
    /// A nested attribute (sent with `NLA_F_NESTED`, which ethtool's
    /// strict validation requires).
    Nested(u16, Vec<EtNla>),
    /// A NUL-terminated string.
    Str(u16, String),
    /// A native-endian u32.
    U32(u16, u32),
}

impl Nla for EtNla {
    fn value_len(&self) -> usize {
        match self {
            EtNla::Nested(_, v) => v.as_slice().buffer_len(),
            EtNla::Str(_, s) => s.len() + 1,
            EtNla::U32(..) => 4,
        }
    }

    fn kind(&self) -> u16 {
        match self {
            EtNla::Nested(k, _) => *k | NLA_F_NESTED,
            EtNla::Str(k, _) | EtNla::U32(k, _) => *k,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            EtNla::Nested(_, v) => v.as_slice().emit(buffer),
            EtNla::Str(_, s) => {
                buffer[..s.len()].copy_from_slice(s.as_bytes());
                buffer[s.len()] = 0;
            }
            EtNla::U32(_, n) => buffer[..4].copy_from_slice(&n.to_ne_bytes()),
        }
    }
}

/// An ethtool generic netlink message: a command and its attributes.
/// Replies are kept as raw bytes (nothing here reads them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EthtoolMsg {
    cmd: u8,
    nlas: Vec<EtNla>,
    raw: Vec<u8>,
}

impl GenlFamily for EthtoolMsg {
    fn family_name() -> &'static str {
        ETHTOOL_GENL_NAME
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        ETHTOOL_GENL_VERSION
    }
}

impl Emitable for EthtoolMsg {
    fn buffer_len(&self) -> usize {
        self.nlas.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.nlas.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for EthtoolMsg {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(EthtoolMsg {
            cmd: header.cmd,
            nlas: Vec::new(),
            raw: buf.to_vec(),
        })
    }
}

/// The `FEATURES_SET` request turning the TX checksum features of
/// `ifname` off, with no reply asked for beyond the ACK.
pub(crate) fn tx_checksum_off_request(ifname: &str) -> EthtoolMsg {
    let bits = TX_CHECKSUM_FEATURES
        .iter()
        .map(|name| {
            EtNla::Nested(
                ETHTOOL_A_BITSET_BITS_BIT,
                vec![EtNla::Str(ETHTOOL_A_BITSET_BIT_NAME, (*name).to_owned())],
            )
        })
        .collect();
    EthtoolMsg {
        cmd: ETHTOOL_MSG_FEATURES_SET,
        nlas: vec![
            EtNla::Nested(
                ETHTOOL_A_FEATURES_HEADER,
                vec![
                    EtNla::Str(ETHTOOL_A_HEADER_DEV_NAME, ifname.to_owned()),
                    EtNla::U32(ETHTOOL_A_HEADER_FLAGS, ETHTOOL_FLAG_OMIT_REPLY),
                ],
            ),
            EtNla::Nested(
                ETHTOOL_A_FEATURES_WANTED,
                vec![EtNla::Nested(ETHTOOL_A_BITSET_BITS, bits)],
            ),
        ],
        raw: Vec::new(),
    }
}

/// The family id, once resolved in this process.
static FAMILY_ID: OnceLock<u16> = OnceLock::new();

/// The ethtool family id: cached, or asked of the kernel over `sock` (a
/// `NETLINK_GENERIC` socket).
pub(crate) fn family_id(sock: &mut SyncSocket) -> Result<u16, NlError> {
    if let Some(id) = FAMILY_ID.get() {
        return Ok(*id);
    }
    let req = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(ETHTOOL_GENL_NAME.to_owned())],
    });
    let replies = sock.request(req, NLM_F_ACK)?;
    let id = replies
        .iter()
        .flat_map(|r| r.payload.nlas.iter())
        .find_map(|a| match a {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })
        .ok_or_else(|| NlError::Decode("CTRL_CMD_GETFAMILY reply without a family id".into()))?;
    Ok(*FAMILY_ID.get_or_init(|| id))
}

/// Turns TX checksum offload off on `ifname`, in the netns `sock` (a
/// `NETLINK_GENERIC` socket) is bound to.
pub(crate) fn set_tx_checksum_off(sock: &mut SyncSocket, ifname: &str) -> Result<(), NlError> {
    let family = family_id(sock)?;
    let mut msg = GenlMessage::from_payload(tx_checksum_off_request(ifname));
    msg.set_resolved_family_id(family);
    sock.request(msg, NLM_F_ACK)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkMessage;

    /// `ethtool -K eth1 tx off`'s request as the kernel parses it:
    /// attributes walked by hand, not through the types above.
    #[test]
    fn features_set_wire_format() {
        let mut msg = GenlMessage::from_payload(tx_checksum_off_request("eth1"));
        msg.set_resolved_family_id(0x1f);
        let mut nl = NetlinkMessage::from(msg);
        nl.header.flags = NLM_F_ACK | netlink_packet_core::NLM_F_REQUEST;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);

        let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        assert_eq!(u16_at(&buf, 4), 0x1f, "message type is the family id");
        assert_eq!(buf[16], ETHTOOL_MSG_FEATURES_SET, "genl cmd");
        assert_eq!(buf[17], 1, "genl version");

        // Walk the attributes: (len, type) headers, 4-byte aligned.
        fn attrs(b: &[u8]) -> Vec<(u16, &[u8])> {
            let mut out = Vec::new();
            let mut i = 0;
            while i + 4 <= b.len() {
                let len = u16::from_ne_bytes([b[i], b[i + 1]]) as usize;
                let kind = u16::from_ne_bytes([b[i + 2], b[i + 3]]);
                out.push((kind, &b[i + 4..i + len]));
                i += (len + 3) & !3;
            }
            out
        }
        let top = attrs(&buf[20..]);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].0, ETHTOOL_A_FEATURES_HEADER | NLA_F_NESTED);
        let header = attrs(top[0].1);
        assert_eq!(header[0], (ETHTOOL_A_HEADER_DEV_NAME, &b"eth1\0"[..]));
        assert_eq!(header[1].0, ETHTOOL_A_HEADER_FLAGS);
        assert_eq!(header[1].1, &ETHTOOL_FLAG_OMIT_REPLY.to_ne_bytes()[..]);

        assert_eq!(top[1].0, ETHTOOL_A_FEATURES_WANTED | NLA_F_NESTED);
        let wanted = attrs(top[1].1);
        assert_eq!(wanted.len(), 1, "bits only: no NOMASK, no SIZE");
        assert_eq!(wanted[0].0, ETHTOOL_A_BITSET_BITS | NLA_F_NESTED);
        let bits = attrs(wanted[0].1);
        let names: Vec<String> = bits
            .iter()
            .map(|(kind, v)| {
                assert_eq!(*kind, ETHTOOL_A_BITSET_BITS_BIT | NLA_F_NESTED);
                let inner = attrs(v);
                assert_eq!(inner.len(), 1, "a name and no VALUE flag: turn off");
                assert_eq!(inner[0].0, ETHTOOL_A_BITSET_BIT_NAME);
                let s = inner[0].1;
                assert_eq!(s.last(), Some(&0));
                String::from_utf8(s[..s.len() - 1].to_vec()).unwrap()
            })
            .collect();
        assert_eq!(names, TX_CHECKSUM_FEATURES);
        assert!(names.contains(&"tx-checksum-ip-generic".to_owned()));
    }
}
