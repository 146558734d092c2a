//! Hand-built BTF blobs for the unit tests (a kernel-like type graph), built
//! byte by byte following the format in btf.rst, so
//! the resolver can be tested without a kernel.

pub struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

impl Builder {
    pub fn new() -> Self {
        Self {
            types: vec![],
            strings: vec![0],
            next_id: 1,
        }
    }
    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }
    fn head(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, size_or_type: u32) -> u32 {
        let n = self.s(name);
        let info = (kflag as u32) << 31 | kind << 24 | vlen;
        for w in [n, info, size_or_type] {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        self.next_id += 1;
        self.next_id - 1
    }
    pub fn int(&mut self, name: &str, size: u32) -> u32 {
        let id = self.head(name, 1, 0, false, size);
        self.types.extend_from_slice(&(size * 8).to_le_bytes());
        id
    }
    pub fn ptr(&mut self, to: u32) -> u32 {
        self.head("", 2, 0, false, to)
    }
    pub fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
        let id = self.head("", 3, 0, false, 0);
        for w in [elem, index, n] {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
        id
    }
    pub fn volatile(&mut self, to: u32) -> u32 {
        self.head("", 9, 0, false, to)
    }
    pub fn typedef(&mut self, name: &str, to: u32) -> u32 {
        self.head(name, 8, 0, false, to)
    }
    /// members: (name, type, bit offset, bitfield size)
    pub fn composite(
        &mut self,
        name: &str,
        union: bool,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let kflag = members.iter().any(|m| m.3 != 0);
        let id = self.head(
            name,
            if union { 5 } else { 4 },
            members.len() as u32,
            kflag,
            size,
        );
        for &(mname, ty, bits, bitfield) in members {
            let n = self.s(mname);
            let off = if kflag { bitfield << 24 | bits } else { bits };
            for w in [n, ty, off] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
        }
        id
    }
    pub fn enumeration(&mut self, name: &str, values: &[(&str, u32)]) -> u32 {
        let id = self.head(name, 6, values.len() as u32, false, 4);
        for &(n, v) in values {
            let n = self.s(n);
            self.types.extend_from_slice(&n.to_le_bytes());
            self.types.extend_from_slice(&v.to_le_bytes());
        }
        id
    }
    pub fn func_proto(&mut self, params: &[u32]) -> u32 {
        let named: Vec<(&str, u32)> = params.iter().map(|&p| ("", p)).collect();
        self.func_proto_named(&named)
    }
    pub fn func_proto_named(&mut self, params: &[(&str, u32)]) -> u32 {
        let names: Vec<u32> = params.iter().map(|(n, _)| self.s(n)).collect();
        let id = self.head("", 13, params.len() as u32, false, 0);
        for (&(_, p), n) in params.iter().zip(names) {
            self.types.extend_from_slice(&n.to_le_bytes());
            self.types.extend_from_slice(&p.to_le_bytes());
        }
        id
    }
    /// The id the next type added will get.
    pub fn next_id(&self) -> u32 {
        self.next_id
    }
    pub fn func(&mut self, name: &str, proto: u32) -> u32 {
        self.head(name, 12, 0, false, proto)
    }
    pub fn build(&self) -> Vec<u8> {
        let mut out = vec![];
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        for w in [
            24u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A miniature of the kernel's socket structs, laid out as on x86_64
/// 6.x where it matters: anonymous unions inside `sock_common`, the
/// timer inside `sock`, a bitfield, and the tracepoint typedefs.
pub fn kernel_like() -> Vec<u8> {
    kernel_like_with(false)
}

/// `icsk_keepalive`: the keepalive timer in `inet_connection_sock` (at
/// byte 1176, as Debian's 6.1.0-56 has it) besides `sock.sk_timer`.
pub fn kernel_like_with(icsk_keepalive: bool) -> Vec<u8> {
    let mut b = Builder::new();
    let u8_ = b.int("unsigned char", 1);
    let u16_ = b.int("short unsigned int", 2);
    let u32_ = b.int("unsigned int", 4);
    let u64_ = b.int("long unsigned int", 8);
    let int_ = b.int("int", 4);
    let void_ptr = b.ptr(0);
    let be32 = b.typedef("__be32", u32_);
    let be16 = b.typedef("__be16", u16_);
    let vu8 = b.volatile(u8_);
    let hnode = b.composite(
        "hlist_node",
        false,
        16,
        &[("next", void_ptr, 0, 0), ("pprev", void_ptr, 64, 0)],
    );
    let timer = b.composite(
        "timer_list",
        false,
        40,
        &[
            ("entry", hnode, 0, 0),
            ("expires", u64_, 128, 0),
            ("function", void_ptr, 192, 0),
            ("flags", u32_, 256, 0),
        ],
    );
    let addrs = b.composite(
        "",
        false,
        8,
        &[("skc_daddr", be32, 0, 0), ("skc_rcv_saddr", be32, 32, 0)],
    );
    let addr_u = b.composite(
        "",
        true,
        8,
        &[("skc_addrpair", u64_, 0, 0), ("", addrs, 0, 0)],
    );
    let ports = b.composite(
        "",
        false,
        4,
        &[("skc_dport", be16, 0, 0), ("skc_num", u16_, 16, 0)],
    );
    let port_u = b.composite(
        "",
        true,
        4,
        &[("skc_portpair", u32_, 0, 0), ("", ports, 0, 0)],
    );
    let in6 = b.array(u8_, u32_, 16);
    let ns_common = b.composite(
        "ns_common",
        false,
        24,
        &[
            ("stashed", u64_, 0, 0),
            ("ops", void_ptr, 64, 0),
            ("inum", u32_, 128, 0),
        ],
    );
    let net = b.composite(
        "net",
        false,
        64,
        &[("passive", u32_, 0, 0), ("ns", ns_common, 64, 0)],
    );
    let net_ptr = b.ptr(net);
    let possible_net = b.composite("", false, 8, &[("net", net_ptr, 0, 0)]);
    let possible_net_t = b.typedef("possible_net_t", possible_net);
    let a64 = b.composite("", false, 8, &[("counter", u64_, 0, 0)]);
    let atomic64 = b.typedef("atomic64_t", a64);
    let skc = b.composite(
        "sock_common",
        false,
        136,
        &[
            ("", addr_u, 0, 0),
            ("", port_u, 96, 0),
            ("skc_family", u16_, 128, 0),
            ("skc_state", vu8, 144, 0),
            ("skc_reuse", u8_, 152, 4),
            ("skc_net", possible_net_t, 384, 0),
            ("skc_v6_daddr", in6, 448, 0),
            ("skc_v6_rcv_saddr", in6, 576, 0),
            ("skc_cookie", atomic64, 704, 0),
            ("skc_flags", u64_, 768, 0),
        ],
    );
    b.composite(
        "sock",
        false,
        800,
        &[
            ("__sk_common", skc, 0, 0),
            ("sk_err", int_, 2048, 0),
            ("sk_socket", void_ptr, 2112, 0),
            ("sk_protocol", u16_, 2176, 0),
            ("sk_shutdown", u8_, 2192, 0),
            ("sk_max_ack_backlog", u32_, 2208, 0),
            ("sk_timer", timer, 4096, 0),
        ],
    );
    let icsk_ack = b.composite(
        "",
        false,
        32,
        &[("pending", u8_, 0, 0), ("lrcvtime", u32_, 64, 0)],
    );
    let mut icsk = vec![
        ("icsk_inet", u64_, 0, 0),
        ("icsk_retransmits", u8_, 8400, 0),
        ("icsk_probes_out", u8_, 8408, 0),
        ("icsk_ack", icsk_ack, 8448, 0),
    ];
    if icsk_keepalive {
        icsk.push(("icsk_keepalive_timer", timer, 9408, 0));
    }
    b.composite("inet_connection_sock", false, 1240, &icsk);
    b.composite(
        "inet_sock",
        false,
        960,
        &[("sk", u64_, 0, 0), ("inet_sport", be16, 6400, 0)],
    );
    b.composite(
        "tcp_sock",
        false,
        2304,
        &[
            ("inet_conn", u64_, 0, 0),
            ("write_seq", u32_, 12544, 0),
            ("snd_una", u32_, 12608, 0),
            ("lsndtime", u32_, 12672, 0),
            ("rcv_tstamp", u32_, 13792, 0),
            ("retrans_stamp", u32_, 13856, 0),
        ],
    );
    b.composite(
        "inet_timewait_sock",
        false,
        200,
        &[("__tw_common", skc, 0, 0), ("tw_substate", u8_, 1152, 0)],
    );
    let dev = b.composite(
        "net_device",
        false,
        2048,
        &[("name", u64_, 0, 0), ("nd_net", possible_net_t, 1024, 0)],
    );
    let dev_ptr = b.ptr(dev);
    let u8_ptr = b.ptr(u8_);
    let skb_dev = b.composite("", true, 8, &[("dev", dev_ptr, 0, 0)]);
    b.composite(
        "sk_buff",
        false,
        232,
        &[
            ("", skb_dev, 128, 0),
            ("transport_header", u16_, 1440, 0),
            ("network_header", u16_, 1456, 0),
            ("head", u8_ptr, 1600, 0),
        ],
    );
    let socket = b.composite("socket", false, 128, &[("state", u32_, 0, 0)]);
    let inode = b.composite(
        "inode",
        false,
        600,
        &[("i_mode", u16_, 0, 0), ("i_ino", u64_, 512, 0)],
    );
    b.composite(
        "socket_alloc",
        false,
        768,
        &[("socket", socket, 0, 0), ("vfs_inode", inode, 1024, 0)],
    );
    // A forward-declared duplicate must not shadow the real struct.
    b.composite("sock", false, 0, &[]);
    b.enumeration("sock_flags", &[("SOCK_DEAD", 0), ("SOCK_KEEPOPEN", 3)]);
    b.enumeration(
        "sk_rst_reason",
        &[
            ("SK_RST_REASON_NOT_SPECIFIED", 0),
            ("SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT", 15),
        ],
    );
    let sock_ptr = b.ptr(0);
    let proto = b.func_proto(&[void_ptr, sock_ptr, void_ptr, u32_]);
    let p = b.ptr(proto);
    b.typedef("btf_trace_tcp_send_reset", p);
    let timer_ptr = b.ptr(0);
    let one = b.func_proto(&[timer_ptr]);
    b.func("tcp_keepalive_timer", one);
    // As Debian's 6.12 built it: `priority` dropped, `reason` second.
    let two = b.func_proto_named(&[("sk", sock_ptr), ("reason", u32_)]);
    b.func("tcp_send_active_reset", two);
    b.build()
}
