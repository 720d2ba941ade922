//! The netlink transport used inside a Pod netns: a blocking
//! `netlink-sys` socket that sends one request and reads its answer
//! (replies, then the ACK, an error or the end of a dump), plus the
//! classification of answers shared with the agent's async connection and
//! the decoding of the kernel's extended-ack message.
//!
//! A socket is bound to the network namespace of the thread that opened
//! it, for as long as it lives; so the Pod-side worker opens its sockets
//! after entering the Pod netns. No tokio here: the worker thread is
//! short-lived and a runtime per ADD would cost more than the work.

use std::fmt::Debug;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkDeserializable, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NlasIterator, NLA_TYPE_MASK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP,
};
use netlink_sys::{Socket, SocketAddr};
use nix::errno::Errno;

use super::error::io_errno;

/// Receive buffer: the kernel sends dump datagrams of up to 32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// `NLMSGERR_ATTR_MSG`: the extended-ack text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Length of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

/// A failed netlink exchange, before the caller adds what it was about.
#[derive(Debug)]
pub(crate) enum NlError {
    /// The kernel answered with an errno.
    Kernel {
        /// The errno.
        errno: Errno,
        /// The extended-ack text, if any.
        message: Option<String>,
    },
    /// Sending or receiving failed.
    Io(Errno),
    /// An answer that cannot be decoded.
    Decode(String),
    /// The agent's connection task is gone.
    Closed,
}

impl NlError {
    /// The kernel's errno, if the kernel answered with one.
    pub(crate) fn kernel_errno(&self) -> Option<Errno> {
        match self {
            NlError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// What one message of an answer means.
#[derive(Debug, PartialEq)]
pub(crate) enum Step<T> {
    /// A reply carrying data.
    Inner(T),
    /// The request's ACK: the answer is complete.
    Ack,
    /// The end of a dump.
    Done,
    /// Nothing to act on (NOOP, overrun notice).
    Skip,
}

/// Classifies one message of an answer (shared by both transports).
pub(crate) fn classify<T>(msg: NetlinkMessage<T>) -> Result<Step<T>, NlError> {
    let flags = msg.header.flags;
    match msg.payload {
        NetlinkPayload::InnerMessage(m) => Ok(Step::Inner(m)),
        NetlinkPayload::Done(_) => Ok(Step::Done),
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(Step::Ack),
            Some(code) => Err(NlError::Kernel {
                errno: Errno::from_raw(code.get().abs()),
                message: extack_message(flags, &e.header),
            }),
        },
        NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => Ok(Step::Skip),
        // The payload enum is not exhaustive upstream.
        #[allow(unreachable_patterns)]
        _ => Ok(Step::Skip),
    }
}

/// The extended-ack text of an `NLMSG_ERROR` message: `flags` are the
/// error message's header flags, `after_code` its payload after the
/// errno (the echoed request, whole or only its header when capped, then
/// the TLVs when `NLM_F_ACK_TLVS` is set).
pub(crate) fn extack_message(flags: u16, after_code: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len = after_code.get(0..4)?;
        let len = u32::from_ne_bytes([len[0], len[1], len[2], len[3]]) as usize;
        (len + 3) & !3
    };
    let tlvs = after_code.get(echoed..)?;
    for nla in NlasIterator::new(tlvs) {
        let nla = nla.ok()?;
        if nla.kind() & NLA_TYPE_MASK == NLMSGERR_ATTR_MSG {
            let v = nla.value();
            let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
            let text = String::from_utf8_lossy(&v[..end]).trim().to_owned();
            return (!text.is_empty()).then_some(text);
        }
    }
    None
}

/// A blocking netlink socket of one protocol, bound to the netns of the
/// thread that opened it.
pub(crate) struct SyncSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl SyncSocket {
    /// Opens a socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_GENERIC`)
    /// with extended ACKs on and capped error echoes.
    pub(crate) fn open(protocol: isize) -> Result<SyncSocket, Errno> {
        let mut sock = Socket::new(protocol).map_err(|e| io_errno(&e))?;
        sock.bind_auto().map_err(|e| io_errno(&e))?;
        // Best effort: only the error texts depend on them.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(SyncSocket {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Sends `payload` with `flags` (NLM_F_REQUEST is added) and returns
    /// the data replies. A dump (`NLM_F_DUMP`) ends with its DONE; any
    /// other request must carry `NLM_F_ACK` and ends with the ACK.
    pub(crate) fn request<T>(&mut self, payload: T, flags: u16) -> Result<Vec<T>, NlError>
    where
        T: NetlinkSerializable + NetlinkDeserializable + Debug,
    {
        let mut msg = NetlinkMessage::new(
            netlink_packet_core::NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(payload),
        );
        self.seq = self.seq.wrapping_add(1);
        msg.header.flags = flags | netlink_packet_core::NLM_F_REQUEST;
        msg.header.sequence_number = self.seq;
        msg.finalize();
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        self.sock
            .send_to(&out, &SocketAddr::new(0, 0), 0)
            .map_err(|e| NlError::Io(io_errno(&e)))?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            let n = self
                .sock
                .recv(&mut self.buf, libc_msg_trunc())
                .map_err(|e| NlError::Io(io_errno(&e)))?;
            if n > self.buf.len() {
                return Err(NlError::Decode(format!(
                    "datagram of {n} bytes exceeds the {RECV_BUF}-byte buffer"
                )));
            }
            let mut off = 0;
            while off < n {
                let bytes = &self.buf[off..n];
                let len = NetlinkBuffer::new_checked(bytes)
                    .map_err(|e| NlError::Decode(e.to_string()))?
                    .length() as usize;
                if len < NLMSG_HDRLEN || len > bytes.len() {
                    return Err(NlError::Decode(format!("bad message length {len}")));
                }
                let m = NetlinkMessage::<T>::deserialize(&bytes[..len])
                    .map_err(|e| NlError::Decode(e.to_string()))?;
                off += (len + 3) & !3;
                if m.header.sequence_number != self.seq {
                    continue; // an answer to an earlier, abandoned request
                }
                match classify(m)? {
                    Step::Inner(r) => replies.push(r),
                    Step::Ack if !dump => return Ok(replies),
                    Step::Done => return Ok(replies),
                    Step::Ack | Step::Skip => {}
                }
            }
        }
    }
}

/// `MSG_TRUNC`, so that `recv` reports a datagram's real length.
fn libc_msg_trunc() -> i32 {
    nix::sys::socket::MsgFlags::MSG_TRUNC.bits()
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{ErrorMessage, NetlinkHeader};
    use std::num::NonZeroI32;

    fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u16).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(value);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn extack_from_capped_error() {
        let mut payload = vec![0u8; 16]; // the echoed header only
        payload[0..4].copy_from_slice(&64u32.to_ne_bytes()); // original length, ignored
        payload.extend(tlv(2, &7u32.to_ne_bytes())); // NLMSGERR_ATTR_OFFS
        payload.extend(tlv(1, b"Nexthop has invalid gateway\0"));
        assert_eq!(
            extack_message(NLM_F_ACK_TLVS | NLM_F_CAPPED, &payload).as_deref(),
            Some("Nexthop has invalid gateway")
        );
        // Without the TLV flag there is no text to look for.
        assert_eq!(extack_message(NLM_F_CAPPED, &payload), None);
    }

    #[test]
    fn extack_after_whole_echoed_request() {
        let mut payload = vec![0u8; 22]; // a 22-byte request, padded to 24
        payload[0..4].copy_from_slice(&22u32.to_ne_bytes());
        payload.extend_from_slice(&[0, 0]);
        payload.extend(tlv(1, b"bad\0"));
        assert_eq!(
            extack_message(NLM_F_ACK_TLVS, &payload).as_deref(),
            Some("bad")
        );
        // Truncated garbage yields nothing rather than a panic.
        assert_eq!(extack_message(NLM_F_ACK_TLVS, &[1, 2]), None);
        assert_eq!(extack_message(NLM_F_ACK_TLVS, &[200, 0, 0, 0]), None);
    }

    fn err_msg(code: i32, flags: u16) -> NetlinkMessage<netlink_packet_route::RouteNetlinkMessage> {
        let mut e = ErrorMessage::default();
        e.code = NonZeroI32::new(code);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        NetlinkMessage::new(header, NetlinkPayload::Error(e))
    }

    #[test]
    fn classify_ack_error_and_done() {
        assert!(matches!(classify(err_msg(0, 0)), Ok(Step::Ack)));
        match classify(err_msg(-17, 0)) {
            Err(NlError::Kernel { errno, message }) => {
                assert_eq!(errno, Errno::EEXIST);
                assert_eq!(message, None);
            }
            other => panic!("{other:?}"),
        }
        let done = NetlinkMessage::<netlink_packet_route::RouteNetlinkMessage>::new(
            NetlinkHeader::default(),
            NetlinkPayload::Done(Default::default()),
        );
        assert!(matches!(classify(done), Ok(Step::Done)));
    }
}
